"""The engine's cost model: what one Fire layer costs on an engine, before anything runs.

:func:`fire_cost` returns, per run (output-channel tile) of the layer's plan
(:class:`spec.tiling.FirePlan`), the weight and parameter rows it loads, the beats on every
stream, the squeeze-buffer words it uses and its cycles at full rate (streams that never
wait: ``hw.bench``'s conditions, and the engine's ``compute`` counter anywhere). The cycles
come from a model of the engine's schedule (docs/engine.md): per row step, the sequencer
squeezes a row, waits for the squeeze rows to reach the line buffer, and expands the row
above, issuing each output group of ``oc_lanes`` channels in ``beats`` cycles; a group's
last beat needs a free place in the accumulator FIFO, which the requantizer frees a channel
a cycle. It is checked against the RTL's cycle counts on every Fire layer of SqueezeNet v1.0
and v1.1 (tests/test_cost.py; within 0.2% there).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .params import CONV_LANES, GROUP_FIFO_DEPTH, EngineParams, ceil_div
from .tiling import ConvPlan, ConvRun, ConvShape, FirePlan, Shape, Tile

#: Registers of an issued operand before the MAC array (op to op5).
OPERAND_STAGES = 5
#: Registers before the requantizer: its request, the parameter memory, its output.
REQUEST_STAGES = 3
#: Cycles a convolution run's end saves on a Fire run's (its last row step and drain).
CONV_END = 4


@dataclass(frozen=True)
class Latencies:
    """Pipeline latencies of the engine's blocks, in cycles. They depend on the multiplier
    style and the widths: ``hw.bench`` reads them off the gateware (``hw.engine_latencies``);
    the defaults are the Arty A7's engine (DSP multipliers, int8)."""

    mac: int = 6  #: the MAC array, last operand in to accumulators out
    requant: int = 12  #: the requantizer
    join: int = 12  #: the bypass join (the plain path is delayed to match)

    @property
    def issue_to_fifo(self) -> int:
        """A group's last beat issued to its accumulators in the FIFO."""
        return OPERAND_STAGES + self.mac + 1

    @property
    def requant_to_line(self) -> int:
        """A squeeze channel requantized to its line-buffer write landing."""
        return REQUEST_STAGES + self.requant + 1

    @property
    def requant_to_output(self) -> int:
        """An expand channel requantized to its output beat: the FIFO after the requantizer,
        the join, the final FIFO."""
        return REQUEST_STAGES + self.requant + 2 + self.join + 2


@dataclass(frozen=True)
class RunCost:
    """One run (tile) of a Fire layer."""

    tile: Tile
    weight_rows: int  #: weight buffer rows loaded (each ``ic_lanes * oc_lanes`` weights)
    qparam_rows: int  #: per-channel parameter entries loaded
    beats: dict[str, int]  #: beats on each stream: cfg, weights, qparams, input, bypass, output
    squeeze_words: int  #: squeeze (line) buffer words the run uses
    cycles: int  #: configuration to last output beat, at full rate


@dataclass(frozen=True)
class LayerCost:
    """A Fire layer: its runs, and their sums."""

    shape: Shape
    runs: list[RunCost] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return sum(r.cycles for r in self.runs)

    @property
    def weight_rows(self) -> int:
        return sum(r.weight_rows for r in self.runs)

    def beats(self, stream: str) -> int:
        return sum(r.beats[stream] for r in self.runs)


class _Schedule:
    """The sequencer and the requantizer, group by group (see the module docstring)."""

    def __init__(self, lat: Latencies):
        self.lat = lat
        self.t = 0  # the cycle of the next issue
        self.rq_free = 0  # the requantizer's next free cycle
        self.squeezed = 0  # when the last squeeze group reaches the line buffer
        self.last_out = 0  # the last output beat
        self.reserved: deque[int] = deque()  # when each reserved FIFO place is freed

    def group(self, beats: int, channels: int, squeeze: bool, lanes: int = 1) -> None:
        self.t += beats - 1
        while self.reserved and self.reserved[0] < self.t:
            self.reserved.popleft()
        if len(self.reserved) >= GROUP_FIFO_DEPTH:  # no credit: wait for the oldest
            self.t = self.reserved[0]
            while self.reserved and self.reserved[0] <= self.t:
                self.reserved.popleft()
        last_beat = self.t
        self.t += 1
        start = max(last_beat + self.lat.issue_to_fifo + 1, self.rq_free)
        self.rq_free = start + ceil_div(channels, lanes)  # ``lanes`` channels a cycle
        self.reserved.append(self.rq_free + 1)  # the credit returns a cycle late
        if squeeze:
            self.squeezed = self.rq_free + self.lat.requant_to_line
        else:
            self.last_out = self.rq_free + self.lat.requant_to_output


def _groups(channels: int, oc: int, beats: int) -> list[tuple[int, int]]:
    return [(beats, min(oc, channels - lo)) for lo in range(0, channels, oc)]


def run_cycles(p: EngineParams, shape: Shape, tile: Tile,
               latencies: Latencies = Latencies()) -> int:
    """Cycles of one run at full rate, configuration beat to last output beat."""
    sh = shape
    kc, ks = ceil_div(sh.cin, p.ic_lanes), ceil_div(sh.s, p.ic_lanes)
    gs = ceil_div(sh.s, p.oc_lanes)
    g1, g3 = ceil_div(len(tile.e1), p.oc_lanes), ceil_div(len(tile.e3), p.oc_lanes)
    # configuration: accept, sizes, three divisions and five products by repetition (each
    # its count of steps and one more), the check and the decision
    rows_kept = sh.h if (tile.retain or not tile.squeeze) else min(sh.h, 3)
    config = 2 + 2 * (gs + g1 + g3 + 3) + (ks + 1) + (rows_kept + 1) + 2
    weights = (gs * kc if tile.squeeze else 0) + g1 * ks + g3 * 9 * ks
    load = max(weights, sh.s + len(tile.e1) + len(tile.e3)) + 2  # both streams at once
    start = 2 + sh.h  # the line buffer's row table
    sched = _Schedule(latencies)
    squeeze = _groups(sh.s, p.oc_lanes, kc)
    expand = _groups(len(tile.e1), p.oc_lanes, ks) + _groups(len(tile.e3), p.oc_lanes, 9 * ks)
    for t in range(sh.h + 1):
        sched.t += 1  # the row step
        if tile.squeeze and t < sh.h:
            for _ in range(sh.w):
                for beats, channels in squeeze:
                    sched.group(beats, channels, True)
        if t > 0:
            sched.t = max(sched.t + 1, sched.squeezed + 1)  # the squeeze rows are written
            for _ in range(sh.w):
                for beats, channels in expand:
                    sched.group(beats, channels, False)
    return config + load + start + sched.last_out


def fire_cost(p: EngineParams, shape: Shape, *, bypass: bool = False, retain: bool = True,
              latencies: Latencies = Latencies()) -> LayerCost:
    """The cost of one Fire layer of ``shape`` on an engine with parameters ``p``, planned as
    the driver plans it (:class:`spec.tiling.FirePlan`; :class:`spec.tiling.PlanError` for a
    layer the engine cannot take)."""
    plan = FirePlan(p, shape, bypass=bypass, retain=retain)
    runs = []
    for tile, beats in zip(plan.tiles, plan.stream_counts(), strict=True):
        rows_kept = shape.h if tile.retain or not tile.squeeze else min(shape.h, 3)
        runs.append(RunCost(tile=tile, weight_rows=beats["weights"],
                            qparam_rows=beats["qparams"], beats={"cfg": 1, **beats},
                            squeeze_words=rows_kept * shape.w * plan.ks,
                            cycles=run_cycles(p, shape, tile, latencies)))
    return LayerCost(shape, runs)


@dataclass(frozen=True)
class ConvRunCost:
    """One run of a 1x1 convolution (a block of channels over a block of pixels)."""

    run: ConvRun
    weight_rows: int
    qparam_rows: int
    beats: dict[str, int]
    cycles: int  #: configuration to last output beat, at full rate


@dataclass(frozen=True)
class ConvCost:
    """A 1x1 convolution: its runs, and their sums."""

    shape: ConvShape
    runs: list[ConvRunCost] = field(default_factory=list)

    @property
    def cycles(self) -> int:
        return sum(r.cycles for r in self.runs)

    def beats(self, stream: str) -> int:
        return sum(r.beats[stream] for r in self.runs)


def conv_run_cycles(p: EngineParams, shape: ConvShape, run: ConvRun,
                    latencies: Latencies = Latencies(), *, wide: bool = False) -> int:
    """Cycles of one convolution run at full rate, configuration beat to last output beat:
    a Fire run's squeeze alone (``run_cycles``' terms without the expands), its values
    requantized to the output a channel a cycle, or with ``wide`` (a wide run whose
    parameters qualify, ``spec.quant.narrow_ok``) ``CONV_LANES`` channels of a group a
    cycle."""
    kc = ceil_div(shape.cin, p.ic_lanes)
    s = len(run.channels)
    ks, gs = ceil_div(s, p.ic_lanes), ceil_div(s, p.oc_lanes)
    config = 2 + 2 * (gs + 3) + (ks + 1) + (min(run.h, 3) + 1) + 2
    load = max(gs * kc, s) + 2 if run.load else 0
    start = 2 + run.h
    sched = _Schedule(latencies)
    # the first pixel's kc words arrive from START on, while the row table is built (h
    # cycles): a wide pixel on a short block keeps the sequencer waiting for the rest
    sched.t = max(0, kc - 2 - run.h)
    groups = _groups(s, p.oc_lanes, kc)
    for _ in range(run.h):
        sched.t += 1  # the row step
        for _ in range(run.w):
            for beats, channels in groups:
                sched.group(beats, channels, False, CONV_LANES if wide else 1)
    # a convolution's run ends without the Fire schedule's last row step and expand
    # (measured against the RTL, tests/test_cost.py)
    return config + load + start + sched.last_out - CONV_END


def conv_cost(p: EngineParams, shape: ConvShape, *, relu: bool = True,
              latencies: Latencies = Latencies(), wide: bool = False) -> ConvCost:
    """The cost of a 1x1 convolution of ``shape`` planned as the driver plans it
    (:class:`spec.tiling.ConvPlan`); ``wide``: as the layer sequencer runs it, ``CONV_LANES``
    channels a cycle (parameters that qualify)."""
    plan = ConvPlan(p, shape, relu=relu)
    runs = [ConvRunCost(run, beats["weights"], beats["qparams"], {"cfg": 1, **beats},
                        conv_run_cycles(p, shape, run, latencies, wide=wide))
            for run, beats in zip(plan.runs, plan.stream_counts(), strict=True)]
    return ConvCost(shape, runs)
