"""Amaranth-simulator tests of the pools (``hw.pool``) against the golden model.

Each test runs several configurations one after another in one simulation (so that a run
that leaves state behind spoils the next), with random gaps on the input and backpressure on
the output, random maps with the extreme values, odd and even sizes (ceil mode's clipped
windows at the far edges), and configurations that must be refused without taking input.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.sim import Simulator
from streams import randomly, stream_get, stream_put

from hw.pool import GlobalAvgPool, GlobalAvgPoolError, MaxPool, MaxPoolError
from spec.quant import QuantSpec
from sw import ops
from sw.quantize import QAvgPool, _requant


def to_beats(x, bits: int, lanes: int) -> list[int]:
    """HWC values (channels a multiple of ``lanes``) as beats: value ``i`` at bits
    ``i*bits``, a pixel's beats together, row-major."""
    flat = np.asarray(x, dtype=np.int64).reshape(-1, lanes) & ((1 << bits) - 1)
    return [sum(int(v) << (i * bits) for i, v in enumerate(row)) for row in flat]


def from_beats(beats, bits: int, per_beat: int, shape) -> np.ndarray:
    """Beats of ``per_beat`` signed ``bits``-bit values back to an array of ``shape``."""
    vals = [((b >> (i * bits)) & ((1 << bits) - 1)) for b in beats for i in range(per_beat)]
    vals = np.array(vals, dtype=np.int64)
    vals = np.where(vals >= 1 << (bits - 1), vals - (1 << bits), vals)
    return vals[:int(np.prod(shape))].reshape(shape)


def random_map(rng, h, w, c, spec: QuantSpec) -> np.ndarray:
    x = rng.integers(spec.act_min, spec.act_max + 1, (h, w, c))
    # the extremes, often: a max that is wrong on them (unsigned compare, overflow) shows
    corners = rng.random((h, w, c))
    x[corners < 0.15] = spec.act_min
    x[corners > 0.85] = spec.act_max
    return x


def run_jobs(dut, jobs, cfg_payload, rng, *, gaps: float, stalls: float, out_beats, limit):
    """Configure, feed and drain ``jobs`` in order: ``(cfg, beats or None)``; ``None``:
    the configuration must be refused and is fed nothing. Returns each job's ``error``, its
    output beats and the cycles from its first input beat to its last output beat."""
    errors, outputs, spans = [], [], []
    first_in, last_out = {}, {}
    cycle_counter = Signal(32)

    async def control(ctx):
        for k, (cfg, _) in enumerate(jobs):
            for name, value in cfg_payload(cfg).items():
                ctx.set(getattr(dut.cfg.payload, name), value)
            ctx.set(dut.cfg.valid, 1)
            while not ctx.get(dut.cfg.ready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(dut.cfg.valid, 0)
            accepted = 0
            for _ in range(limit):
                accepted += ctx.get(dut.accepted)
                if ctx.get(dut.done):
                    break
                await ctx.tick()
            else:
                raise AssertionError(f"job {k} {cfg}: no done within {limit} cycles")
            errors.append(ctx.get(dut.error))
            # ``accepted`` pulsed once for a run, never for a refusal
            assert accepted == (ctx.get(dut.error).value == 0), (k, cfg, accepted)
            await ctx.tick()

    async def feeder(ctx):
        g = randomly(rng, gaps)
        for k, (_, beats) in enumerate(jobs):
            for i, b in enumerate(beats or []):
                await stream_put(ctx, dut.input, b, gaps=g, limit=limit)
                if i == 0:
                    first_in[k] = ctx.get(cycle_counter)

    async def collector(ctx):
        s = randomly(rng, stalls)
        for k, (cfg, beats) in enumerate(jobs):
            got = []
            for _ in range(out_beats(cfg) if beats is not None else 0):
                got.append(await stream_get(ctx, dut.output, stalls=s, limit=limit))
            last_out[k] = ctx.get(cycle_counter)
            outputs.append(got)

    top = Module()  # the DUT and a cycle counter, for the spans
    top.submodules.dut = dut
    top.d.sync += cycle_counter.eq(cycle_counter + 1)
    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(control)
    sim.add_testbench(feeder)
    sim.add_testbench(collector)
    sim.run()
    for k in range(len(jobs)):
        spans.append(last_out[k] - first_in[k] if k in first_in else None)
    return errors, outputs, spans


# --- max pool -----------------------------------------------------------------------------

MP = dict(bits=8, lanes=4, max_h=9, max_w=9, max_cw=3, row_words=8, fifo_depth=8)


def maxpool_jobs(rng, bits, lanes, sizes):
    spec = QuantSpec(bits)
    jobs, expect = [], []
    for h, w, cw in sizes:
        x = random_map(rng, h, w, cw * lanes, spec)
        jobs.append(((h, w, cw), to_beats(x, bits, lanes)))
        expect.append(ops.maxpool(x))
    return jobs, expect


def mp_cfg(cfg):
    return dict(zip(("h", "w", "cw"), cfg, strict=True))


def mp_out_beats(cfg):
    h, w, cw = cfg
    return (h // 2) * (w // 2) * cw


@pytest.mark.parametrize("seed,gaps,stalls", [(1, 0.3, 0.3), (2, 0.0, 0.9), (3, 0.6, 0.0)])
def test_maxpool_matches_the_golden_model_run_after_run(seed, gaps, stalls):
    """Odd and even heights and widths (the clipped windows of ceil mode), one to three beats
    a pixel, the smallest maps (2x2, 3x2) and output rows of one and two words, back to
    back."""
    rng = np.random.default_rng(seed)
    sizes = [(7, 8, 2), (8, 7, 1), (2, 2, 2), (3, 3, 3), (5, 6, 2), (9, 9, 2), (4, 4, 1),
             (3, 2, 3)]
    jobs, expect = maxpool_jobs(rng, MP["bits"], MP["lanes"], sizes)
    dut = MaxPool(**MP)
    errors, outputs, _ = run_jobs(dut, jobs, mp_cfg, rng, gaps=gaps, stalls=stalls,
                                  out_beats=mp_out_beats, limit=5000)
    assert errors == [MaxPoolError.OK] * len(jobs)
    for (cfg, _), got, want in zip(jobs, outputs, expect, strict=True):
        np.testing.assert_array_equal(
            from_beats(got, MP["bits"], MP["lanes"], want.shape), want, f"map {cfg}")


def test_maxpool_refuses_sizes_beyond_its_limits_and_runs_on():
    """Each refused configuration names its field, takes no input, and the pool still runs
    the next good one."""
    rng = np.random.default_rng(4)
    good, expect = maxpool_jobs(rng, MP["bits"], MP["lanes"], [(5, 5, 2), (6, 4, 3)])
    bad = [((1, 5, 1), MaxPoolError.H), ((10, 5, 1), MaxPoolError.H),
           ((5, 1, 1), MaxPoolError.W), ((5, 10, 1), MaxPoolError.W),
           ((5, 5, 0), MaxPoolError.CW), ((9, 9, 3), MaxPoolError.ROW),
           ((5, 3, 1), MaxPoolError.SMALL), ((2, 2, 1), MaxPoolError.SMALL)]
    jobs = [good[0]] + [(cfg, None) for cfg, _ in bad] + [good[1]]
    dut = MaxPool(**MP)
    errors, outputs, _ = run_jobs(dut, jobs, mp_cfg, rng, gaps=0.2, stalls=0.2,
                                  out_beats=mp_out_beats, limit=3000)
    assert errors == [MaxPoolError.OK] + [e for _, e in bad] + [MaxPoolError.OK]
    for got, want in zip([outputs[0], outputs[-1]], expect, strict=True):
        np.testing.assert_array_equal(from_beats(got, MP["bits"], MP["lanes"], want.shape),
                                      want)


def test_maxpool_other_widths():
    """4-bit values, two lanes: the lane slicing and the signed compare follow ``bits``."""
    p = dict(bits=4, lanes=2, max_h=8, max_w=8, max_cw=2, row_words=8)
    rng = np.random.default_rng(5)
    jobs, expect = maxpool_jobs(rng, p["bits"], p["lanes"], [(5, 7, 2), (6, 6, 1)])
    errors, outputs, _ = run_jobs(MaxPool(**p), jobs, mp_cfg, rng, gaps=0.2, stalls=0.2,
                                  out_beats=mp_out_beats, limit=3000)
    assert errors == [MaxPoolError.OK] * 2
    for got, want in zip(outputs, expect, strict=True):
        np.testing.assert_array_equal(from_beats(got, p["bits"], p["lanes"], want.shape), want)


def test_maxpool_takes_a_beat_a_cycle():
    """At full rate the pool keeps up with its input: a map of N beats takes about N
    cycles from its first beat in to its last beat out."""
    rng = np.random.default_rng(6)
    p = dict(MP, max_h=16, max_w=16, row_words=24, fifo_depth=16)
    sizes = [(16, 15, 3), (15, 16, 1)]
    jobs, expect = maxpool_jobs(rng, p["bits"], p["lanes"], sizes)
    _, outputs, spans = run_jobs(MaxPool(**p), jobs, mp_cfg, rng, gaps=0.0, stalls=0.0,
                                 out_beats=mp_out_beats, limit=5000)
    for (cfg, beats), span, got, want in zip(jobs, spans, outputs, expect, strict=True):
        np.testing.assert_array_equal(from_beats(got, p["bits"], p["lanes"], want.shape), want)
        assert span <= len(beats) + 8, (cfg, span, len(beats))


# --- global average pool ------------------------------------------------------------------

GAP = dict(bits=8, lanes=8, max_h=5, max_w=5, max_cw=3, group=2)


def gap_cfg(cfg):
    return cfg


def gap_expected(x, cfg, spec):
    """The golden model's pool of ``x`` under the DUT's configuration ``cfg``."""
    if cfg["exact"]:
        return QAvgPool(1.0, cfg["z_in"], 1.0, 0, exact=True)(x, spec).reshape(-1)
    rq = ops.Requant(np.array([cfg["mult"]]), np.array([cfg["shift"]]), cfg["z_out"], False)
    return ops.global_avgpool(x, cfg["z_in"], rq, spec).reshape(-1)


def gap_jobs(rng, p, cases):
    """``cases``: ``(h, w, cw, how)``; ``how`` is ``"scales"`` (the multiplier the host
    derives from random scales, ``sw.quantize``'s own), ``"random"`` (any multiplier and
    shift), ``"exact"``, or ``"extreme"`` (every value at one end: the largest sums)."""
    spec = QuantSpec(p["bits"])
    jobs, expect = [], []
    for h, w, cw, how in cases:
        x = random_map(rng, h, w, cw * p["lanes"], spec)
        z_in = int(rng.integers(spec.act_min, spec.act_max + 1))
        z_out = int(rng.integers(spec.act_min, spec.act_max + 1))
        if how == "extreme":
            x[:] = spec.act_max if rng.random() < 0.5 else spec.act_min
            z_in = spec.act_min if x.flat[0] == spec.act_max else spec.act_max
        if how == "random":
            mult, shift = int(rng.integers(0, 1 << 31)), int(rng.integers(1, 64))
        else:
            s_in = float(rng.uniform(0.01, 0.1))
            s_out = s_in * float(rng.uniform(0.05, 2.0))
            rq = _requant(s_in, 1.0 / (h * w), s_out, z_out, relu=False)
            mult, shift = int(rq.m[0]), int(rq.n[0])
            assert rq.m.shape == (1,)  # one multiplier for the whole tensor
        cfg = dict(h=h, w=w, cw=cw, z_in=z_in, mult=mult, shift=shift, z_out=z_out,
                   exact=int(how == "exact"))
        want = gap_expected(x, cfg, spec)
        if how == "scales":  # the host's layer computes the same
            np.testing.assert_array_equal(
                QAvgPool(s_in, z_in, s_out, z_out)(x, spec).reshape(-1), want)
        jobs.append((cfg, to_beats(x, p["bits"], p["lanes"])))
        expect.append(want)
    return jobs, expect


def gap_check(dut, p, jobs, outputs, expect):
    for (cfg, _), got, want in zip(jobs, outputs, expect, strict=True):
        if cfg["exact"]:
            per = p["lanes"] * p["bits"] // dut.exact_bits
            vals = from_beats(got, dut.exact_bits, per, want.shape)
        else:
            vals = from_beats(got, p["bits"], p["lanes"], want.shape)
        np.testing.assert_array_equal(vals, want, f"pool {cfg}")


@pytest.mark.parametrize("seed,gaps,stalls", [(1, 0.3, 0.3), (2, 0.0, 0.7), (3, 0.7, 0.0)])
def test_global_avgpool_matches_the_golden_model_run_after_run(seed, gaps, stalls):
    """Requantized with the host's multipliers and with arbitrary ones, exact sums, the
    largest sums, one pixel and odd sizes, one to three beats a pixel, back to back."""
    rng = np.random.default_rng(seed)
    cases = [(3, 4, 2, "scales"), (5, 5, 3, "exact"), (1, 1, 1, "scales"),
             (5, 5, 2, "extreme"), (2, 3, 3, "random"), (4, 1, 1, "random"),
             (5, 4, 1, "extreme"), (5, 5, 1, "scales")]
    jobs, expect = gap_jobs(rng, GAP, cases)
    dut = GlobalAvgPool(**GAP)
    errors, outputs, _ = run_jobs(dut, jobs, gap_cfg, rng, gaps=gaps, stalls=stalls,
                                  out_beats=lambda c: dut.output_beats(c["cw"], c["exact"]),
                                  limit=5000)
    assert errors == [GlobalAvgPoolError.OK] * len(jobs)
    gap_check(dut, GAP, jobs, outputs, expect)


def test_global_avgpool_refuses_sizes_beyond_its_limits_and_runs_on():
    rng = np.random.default_rng(4)
    good, expect = gap_jobs(rng, GAP, [(2, 2, 1, "scales"), (3, 3, 2, "exact")])
    base = dict(h=2, w=2, cw=1, z_in=0, mult=1 << 30, shift=31, z_out=0, exact=0)
    bad = [(dict(base, h=0), GlobalAvgPoolError.H), (dict(base, h=6), GlobalAvgPoolError.H),
           (dict(base, w=0), GlobalAvgPoolError.W), (dict(base, w=6), GlobalAvgPoolError.W),
           (dict(base, cw=0), GlobalAvgPoolError.CW),
           (dict(base, cw=4, exact=1), GlobalAvgPoolError.CW),
           (dict(base, shift=0), GlobalAvgPoolError.SHIFT)]
    jobs = [good[0]] + [(cfg, None) for cfg, _ in bad] + [good[1]]
    dut = GlobalAvgPool(**GAP)
    errors, outputs, _ = run_jobs(dut, jobs, gap_cfg, rng, gaps=0.2, stalls=0.2,
                                  out_beats=lambda c: dut.output_beats(c["cw"], c["exact"]),
                                  limit=3000)
    assert errors == [GlobalAvgPoolError.OK] + [e for _, e in bad] + [GlobalAvgPoolError.OK]
    gap_check(dut, GAP, [jobs[0], jobs[-1]], [outputs[0], outputs[-1]], expect)


def test_global_avgpool_default_lanes_and_16_bits():
    """The default 16 lanes in groups of 4 (four 32-bit sums a beat), and 16-bit values."""
    for p in (dict(bits=8, lanes=16, max_h=4, max_w=4, max_cw=2, group=4),
              dict(bits=16, lanes=4, max_h=3, max_w=3, max_cw=2, group=1)):
        rng = np.random.default_rng(p["bits"])
        jobs, expect = gap_jobs(rng, p, [(4 if p["bits"] == 8 else 3, 3, 2, "scales"),
                                         (3, 3, 2, "exact"), (2, 3, 1, "extreme")])
        dut = GlobalAvgPool(**p)
        errors, outputs, _ = run_jobs(
            dut, jobs, gap_cfg, rng, gaps=0.2, stalls=0.2,
            out_beats=lambda c, dut=dut: dut.output_beats(c["cw"], c["exact"]), limit=5000)
        assert errors == [GlobalAvgPoolError.OK] * len(jobs)
        gap_check(dut, p, jobs, outputs, expect)
