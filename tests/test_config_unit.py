"""Amaranth-simulator tests of the configuration unit: the sizes it derives by serial
arithmetic and its refusals, against the formulas of docs/engine.md, and its run control."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config_unit import ConfigUnit
from hw.engine import FireEngine
from spec.params import ConfigError, EngineParams, ceil_div, config_fields, pack_config, weight_rows

SMALL = EngineParams(bits=8, ic_lanes=2, oc_lanes=3, max_h=6, max_w=5, max_cin=8,
                     max_squeeze=4, max_e1=6, max_e3=6, weight_depth=48, squeeze_depth=80,
                     bypass=True)
#: weights of the largest layer do not fit (48 rows), nor a retained 6x5 map (60 words)
TIGHT = SMALL.replace(weight_depth=30, squeeze_depth=30, bypass=False)
#: one input lane and one output lane: no division of channels into words or groups
SINGLE = EngineParams(bits=4, ic_lanes=1, oc_lanes=1, max_h=4, max_w=3, max_cin=3,
                      max_squeeze=2, max_e1=3, max_e3=2, weight_depth=48, squeeze_depth=40,
                      bypass=False)
DIMENSIONS = {"h": "max_h", "w": "max_w", "cin": "max_cin", "s": "max_squeeze",
              "e1": "max_e1", "e3": "max_e3"}
#: each dimension's error (zero is refused for all but e1 and e3)
CODES = {"h": ConfigError.H, "w": ConfigError.W, "cin": ConfigError.CIN,
         "s": ConfigError.SQUEEZE, "e1": ConfigError.E1, "e3": ConfigError.E3}


@dataclass(frozen=True)
class Sizes:
    """docs/engine.md's formulas for a layer's derived sizes."""

    input_words: int
    squeeze_words: int
    squeeze_groups: int
    e1_groups: int
    e3_groups: int
    squeeze_rows: int
    weight_rows: int
    qparams: int
    row_words: int
    retain: int
    squeeze_map_words: int  # checked against squeeze_depth, not a port

    @classmethod
    def of(cls, p: EngineParams, c: dict) -> Sizes:
        ic, oc = p.ic_lanes, p.oc_lanes
        kc, ks = ceil_div(c["cin"], ic), ceil_div(c["s"], ic)
        gs, g1, g3 = (ceil_div(c[n], oc) for n in ("s", "e1", "e3"))
        retain = int(c["retain"] or not c["squeeze"])
        rows = c["h"] if retain else min(c["h"], 3)
        # the engine's serial arithmetic against the rule's one statement (spec.params)
        rows_needed = weight_rows(p, cin=c["cin"], s=c["s"], e1=c["e1"], e3=c["e3"],
                                  squeeze=bool(c["squeeze"]))
        return cls(kc, ks, gs, g1, g3, gs * kc, rows_needed,
                   c["s"] + c["e1"] + c["e3"], c["w"] * ks, retain, rows * c["w"] * ks)


class Model:
    """What the configuration unit must answer, remembering what the buffers hold."""

    def __init__(self, p: EngineParams):
        self.p = p
        self.loaded = None  # (weight rows, parameter rows) in the buffers
        self.retained = None  # (h, w, s) of the retained squeeze map

    def error(self, c: dict) -> ConfigError:
        p, z = self.p, Sizes.of(self.p, c)
        h, w, cin, s, e1, e3 = (c[n] for n in DIMENSIONS)
        bypass_on = c["bypass"] and p.bypass
        for refused, code in [
            (h == 0 or h > p.max_h, ConfigError.H),
            (w == 0 or w > p.max_w, ConfigError.W),
            (cin == 0 or cin > p.max_cin, ConfigError.CIN),
            (s == 0 or s > p.max_squeeze, ConfigError.SQUEEZE),
            (e1 > p.max_e1, ConfigError.E1),
            (e3 > p.max_e3, ConfigError.E3),
            (e1 + e3 == 0, ConfigError.NO_OUTPUT),
            (z.weight_rows > p.weight_depth, ConfigError.WEIGHT_ROWS),
            (c["compute"] and z.squeeze_map_words > p.squeeze_depth,
             ConfigError.SQUEEZE_BUFFER),
            (c["bypass"] and not p.bypass, ConfigError.BYPASS),
            ((bypass_on and c["byp_shift"] == 0)
             or (c["rescale"] and 0 in (c["e1_rs_shift"], c["e3_rs_shift"])),
             ConfigError.SHIFT),
            (c["compute"] and not c["squeeze"] and self.retained != (h, w, s),
             ConfigError.NO_SQUEEZE_MAP),
            (c["compute"] and not c["load"] and self.loaded != (z.weight_rows, z.qparams),
             ConfigError.NOT_LOADED),
        ]:
            if refused:
                return code
        return ConfigError.OK

    def handle(self, c: dict, shift_bad: bool) -> ConfigError:
        code = self.error(c)
        if code == ConfigError.OK and c["load"]:
            z = Sizes.of(self.p, c)
            self.loaded = None if shift_bad else (z.weight_rows, z.qparams)
            if shift_bad:
                return ConfigError.SHIFT
        if code == ConfigError.OK and c["compute"] and c["squeeze"]:
            self.retained = (c["h"], c["w"], c["s"]) if c["retain"] else None
        return code


def config(p: EngineParams, **fields) -> dict:
    c = dict(h=2, w=2, cin=2, s=2, e1=1, e3=1, load=1, compute=1, squeeze=1, retain=0,
             bypass=0, byp_shift=1, rescale=0, e1_rs_shift=1, e3_rs_shift=1)
    c.update(fields)
    return c


PULSES = ("taken", "accepted", "refused", "done", "load_start", "prepare", "go", "run_end")


def run_configs(p: EngineParams, cases: list[tuple[dict, bool]]) -> list[dict]:
    """Hand every ``(configuration, shift_bad)`` to a ConfigUnit, playing the rest of the
    engine (loading takes 3 cycles, the row table 2, the run 4); return what it answered."""
    dut = ConfigUnit(p)
    results = []

    async def bench(ctx):
        for c, shift_bad in cases:
            assert ctx.get(dut.cfg.ready), "not ready for a configuration"
            ctx.set(dut.cfg.payload.as_value(), pack_config(p, **c))
            ctx.set(dut.cfg.valid, 1)
            seen, sizes, busy_cycles = [], None, 0
            left = {}  # cycles each stage of the rest of the engine still takes
            for cycle in range(4000):
                # the rest of the engine: loading, the row table, the run
                ctx.set(dut.load_done, ctx.get(dut.loading) and left.get("load_start") == 0)
                ctx.set(dut.shift_bad, shift_bad)
                ctx.set(dut.table_busy, left.get("prepare", 0) > 0)
                ctx.set(dut.seq_done, left.get("go") == 0)
                ctx.set(dut.drained, left.get("go") == 0)
                if cycle:
                    ctx.set(dut.cfg.valid, 0)
                    assert not ctx.get(dut.cfg.ready), "ready while handling one"
                    busy_cycles += ctx.get(dut.running)
                pulses = [n for n in PULSES if ctx.get(getattr(dut, n))]
                seen += pulses
                if "accepted" in pulses:
                    sizes = {f: ctx.get(getattr(dut.sizes, f)) for f in Sizes.__annotations__
                             if f != "squeeze_map_words"}
                left = {k: max(0, n - 1) for k, n in left.items()}
                for pulse, cycles in (("load_start", 3), ("prepare", 2), ("go", 4)):
                    if pulse in pulses:
                        left[pulse] = cycles
                await ctx.tick()
                if "refused" in pulses or "done" in pulses:
                    break
            else:
                raise AssertionError(f"{c}: no answer")
            results.append({"error": ConfigError(ctx.get(dut.error)), "sizes": sizes,
                            "pulses": seen, "busy": busy_cycles,
                            "running": ctx.get(dut.running)})

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def check(p: EngineParams, cases: list[tuple[dict, bool]]) -> list[dict]:
    """Run the cases, compare every answer and every accepted layer's sizes to the model."""
    model = Model(p)
    results = run_configs(p, cases)
    for (c, shift_bad), got in zip(cases, results, strict=True):
        accepted = model.error(c) == ConfigError.OK  # (a bad shift is found while loading)
        want = model.handle(c, shift_bad)
        assert got["error"] == want, f"{c}: expected {want.name}, got {got['error'].name}"
        assert not got["running"], c
        assert ("accepted" in got["pulses"]) == accepted, (c, got["pulses"])
        assert ("refused" in got["pulses"]) == (want != ConfigError.OK), (c, got["pulses"])
        if accepted:
            z = Sizes.of(p, c)
            assert got["sizes"] == {f: getattr(z, f) for f in got["sizes"]}, c
    return results


def test_every_dimension_beyond_its_maximum_and_zero_is_refused():
    """One past each maximum (and zero, and the largest value the field carries) is refused
    with that dimension's error; at every maximum at once the layer is accepted."""
    for p in (SMALL, SINGLE):
        fields = {f.name: f for f in config_fields(p)}
        cases = []
        for name, limit in DIMENSIONS.items():
            top = getattr(p, limit)
            carried = (1 << fields[name].width) - 1  # the largest the field carries
            for value in sorted({top + 1, carried} - {top}):
                if value > carried:
                    continue  # a maximum of 2**k - 1 leaves no room for one more
                cases.append((config(p, **{name: value}), False))
            if name not in ("e1", "e3"):
                cases.append((config(p, **{name: 0}), False))
            cases.append((config(p, **{name: top}), False))  # at the maximum: accepted
        at_max = {name: getattr(p, limit) for name, limit in DIMENSIONS.items()}
        cases.append((config(p, **at_max), False))
        results = check(p, cases)
        for (c, _), got in zip(cases, results, strict=True):
            beyond = [n for n in DIMENSIONS if c[n] > getattr(p, DIMENSIONS[n])]
            if beyond:
                assert got["error"] == CODES[beyond[0]], c
        assert results[-1]["error"] == ConfigError.OK


def test_a_layer_without_output_channels_is_refused_as_such():
    """e1 + e3 = 0 is NO_OUTPUT, not an E1 overflow; either alone may be 0."""
    results = check(SMALL, [(config(SMALL, e1=0, e3=0), False),
                            (config(SMALL, e1=0, e3=1), False),
                            (config(SMALL, e1=1, e3=0), False),
                            (config(SMALL, e1=SMALL.max_e1 + 1, e3=0), False)])
    assert [r["error"] for r in results] == [ConfigError.NO_OUTPUT, ConfigError.OK,
                                             ConfigError.OK, ConfigError.E1]


def test_buffer_limits_are_exact():
    """The weights and the squeeze rows are refused exactly where they exceed their buffers
    (TIGHT: 30 weight rows, 30 squeeze words, 5 words a row at w=5, s=4)."""
    c = config(TIGHT, h=6, w=5, cin=8, s=4)
    cases = [
        (dict(c, e1=6, e3=3), False),  # 8 + 4 + 18 = 30 rows: fits
        (dict(c, e1=6, e3=4), False),  # 8 + 4 + 36: WEIGHT_ROWS
        (dict(c, h=3, e1=6, e3=3, squeeze=0), False),  # reuse: no map
        (dict(c, e1=6, e3=3, retain=1), False),  # 6 rows x 10 words: SQUEEZE_BUFFER
        (dict(c, h=3, e1=6, e3=3, retain=1), False),  # 3 x 10 = 30 words: fits
        (dict(c, h=3, e1=6, e3=3, retain=1, compute=0), False),  # loading only
        (dict(c, e1=6, e3=3, retain=1, compute=0), False),  # no squeeze rows checked
    ]
    got = [r["error"] for r in check(TIGHT, cases)]
    assert got == [ConfigError.OK, ConfigError.WEIGHT_ROWS, ConfigError.NO_SQUEEZE_MAP,
                   ConfigError.SQUEEZE_BUFFER, ConfigError.OK, ConfigError.OK, ConfigError.OK]


def test_what_the_buffers_hold_is_remembered():
    """A compute-only run needs weights of its shape loaded; a reuse run the retained map of
    its shape; a bad shift while loading refuses and forgets the weights; bypass needs an
    engine with it and a shift."""
    c = config(SMALL, h=3, w=4, cin=5, s=3, e1=4, e3=2, retain=1)
    only = dict(c, load=0)
    cases = [
        (only, False),  # nothing loaded
        (c, False),  # load, run, retain the map
        (only, False),  # the same weights: accepted
        (dict(only, e3=5), False),  # other weights: NOT_LOADED
        (dict(only, squeeze=0), False),  # reuse the map: needs fewer weight rows
        (dict(c, squeeze=0, e1=1, e3=1), False),  # reuse with new weights
        (dict(c, squeeze=0, h=2), False),  # a map of another shape: NO_SQUEEZE_MAP
        (dict(c, retain=0), False),  # a run that does not retain
        (dict(c, squeeze=0), False),  # ... leaves no map
        (dict(c, load=1, compute=0), True),  # a shift of 0 while loading
        (only, False),  # ... left nothing loaded
        (dict(c, bypass=1, byp_shift=0), False),
        (dict(c, bypass=1, byp_shift=5), False),
        (dict(c, rescale=1, e1_rs_shift=0), False),  # either branch's rescale shift
        (dict(c, rescale=1, e3_rs_shift=0), False),
        (dict(c, rescale=0, e3_rs_shift=0), False),  # not rescaled: not looked at
        (dict(c, rescale=1, e1_rs_shift=31, e3_rs_shift=1), False),
    ]
    got = [r["error"] for r in check(SMALL, cases)]
    assert got == [ConfigError.NOT_LOADED, ConfigError.OK, ConfigError.OK,
                   ConfigError.NOT_LOADED, ConfigError.NOT_LOADED, ConfigError.OK,
                   ConfigError.NO_SQUEEZE_MAP, ConfigError.OK, ConfigError.NO_SQUEEZE_MAP,
                   ConfigError.SHIFT, ConfigError.NOT_LOADED, ConfigError.SHIFT, ConfigError.OK,
                   ConfigError.SHIFT, ConfigError.SHIFT, ConfigError.OK, ConfigError.OK]
    bypass = check(TIGHT, [(config(TIGHT, bypass=1), False)])
    assert bypass[0]["error"] == ConfigError.BYPASS


@pytest.mark.parametrize("p", [SMALL, TIGHT, SINGLE], ids=["small", "tight", "single"])
def test_random_configurations_against_the_model(p):
    """Random fields up to what each field carries (mostly within the maxima): the answers,
    the derived sizes and the remembered buffers follow the model."""
    rng = np.random.default_rng(7)
    fields = {f.name: f for f in config_fields(p)}
    cases = []
    for _ in range(60):
        c = config(p)
        for name, limit in DIMENSIONS.items():
            top = getattr(p, limit) if rng.random() < 0.9 else (1 << fields[name].width) - 1
            c[name] = int(rng.integers(0 if name in ("e1", "e3") else 1, top + 1))
        for flag in ("load", "compute", "squeeze", "retain", "bypass"):
            c[flag] = int(rng.random() < (0.3 if flag == "bypass" else 0.7))
        c["byp_shift"] = int(rng.integers(0, 3))
        c["rescale"] = int(rng.random() < 0.3)
        c["e1_rs_shift"], c["e3_rs_shift"] = (int(v) for v in rng.integers(0, 4, 2))
        cases.append((c, bool(rng.random() < 0.1)))
    results = check(p, cases)
    answers = {r["error"] for r in results}
    assert ConfigError.OK in answers and len(answers) >= 5, answers


def test_run_control_sequence():
    """Accepted: load, then prepare, go and the run's end, then done; the unit is running
    from the configuration to its done, and takes the next configuration right after."""
    results = run_configs(SMALL, [(config(SMALL), False), (config(SMALL, load=0), False),
                                  (config(SMALL, compute=0), False),
                                  (config(SMALL, h=0), False)])
    order = [[n for n in r["pulses"]] for r in results]
    assert order[0] == ["taken", "accepted", "load_start", "prepare", "go", "run_end", "done"]
    assert order[1] == ["taken", "accepted", "prepare", "go", "run_end", "done"]
    assert order[2] == ["taken", "accepted", "load_start", "done"]
    assert order[3] == ["taken", "refused"]
    # running every cycle after the one taking the configuration, until its end
    assert all(r["busy"] >= 10 for r in results)


def test_the_engine_reports_no_output():
    """The whole engine: ``error`` is a ConfigError port (4 bits, as before) and e1 + e3 = 0
    is answered NO_OUTPUT; the engine then takes the next configuration."""
    dut = FireEngine(SMALL)
    assert dut.signature.members["error"].shape is ConfigError
    assert len(dut.error) == 4
    seen = []

    async def bench(ctx):
        for fields in (config(SMALL, e1=0, e3=0), config(SMALL, compute=0, load=0)):
            ctx.set(dut.cfg.payload.as_value(), pack_config(SMALL, **fields))
            ctx.set(dut.cfg.valid, 1)
            runs = ctx.get(dut.runs)
            await ctx.tick()
            ctx.set(dut.cfg.valid, 0)
            for _ in range(500):
                if ctx.get(dut.runs) != runs:
                    break
                await ctx.tick()
            seen.append(ConfigError(ctx.get(dut.error)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [ConfigError.NO_OUTPUT, ConfigError.OK]
