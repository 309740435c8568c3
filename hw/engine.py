"""The Fire engine: one fused Fire layer (or output-channel tile of one) per run.

Data flow of a run, by component (see docs/engine.md for the reasoning and the host's view)::

    cfg ─> ConfigUnit (sizes, checks, run control) ─> every component below; CycleCounters
    weights, qparams ─> WeightBuffers          input ─> InputBuffer (2 pixels)
    Sequencer ─> OperandFetch (reads WeightBuffers, InputBuffer, LineBuffer) ─> MacArray
    MacArray ─> RequantStage (group FIFO, parameter reads, requantizer)
       ├─ squeeze values ─> LineBuffer (never leaves the chip)
       └─ expand values ─> OutputStage (fire_out, [bypass add], final) ─> output

One ``ic_lanes x oc_lanes`` MAC array is time-shared: for each row ``t`` the sequencer
squeezes row ``t`` and then expands row ``t - 1``, whose 3x3 neighbourhood is then complete.
Results leave the array a group of ``oc_lanes`` accumulators at a time into a FIFO that the
requantizer drains one channel per cycle. The sequencer only issues a group's last beat when
the FIFO has room reserved for it (credits), and the requantizer an expand value only when
the output stage has; so the array, the requantizer and the bypass adder are fixed-latency
pipelines that never stall: backpressure on ``output`` and gaps on ``input``/``bypass`` only
pause the sequencer.

A run in ``conv`` mode is one 1x1 convolution (conv1 packed, conv10): the squeeze alone, its
values requantized to the output stage instead of the line buffer.

Where a component boundary cuts a registered path, the register stays on the producing side
(the issued operation, the read addresses, the credit returns, the sequencer's end), so the
components add no logic between registers (docs/engine.md, timing).
"""

from __future__ import annotations

from amaranth import Module, Mux, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import (
    CONV_LANES,
    GROUP_FIFO_DEPTH,
    OUTPUT_FIFO_DEPTH,
    ConfigError,
    EngineParams,
)

from .config_unit import ConfigUnit
from .cycle_counters import CYCLE_BITS, RUN_BITS, CycleCounters
from .input_buffer import InputBuffer
from .layouts import Kind, config_layout, group_tag_layout, qparam_layout, wide_beat_layout
from .line_buffer import LineBuffer
from .mac_array import MacArray
from .operand_fetch import OperandFetch
from .output_stage import OutputStage
from .requant_stage import RequantStage
from .sequencer import Sequencer
from .weight_buffers import WeightBuffers

__all__ = ["FireEngine", "Kind", "config_layout", "qparam_layout", "GROUP_FIFO_DEPTH",
           "OUTPUT_FIFO_DEPTH"]


class FireEngine(wiring.Component):
    """Fire-module engine (see the module docstring).

    Streams: ``cfg`` (a layer configuration starts a run), ``weights`` (rows of
    ``oc_lanes x ic_lanes`` weights), ``qparams`` (per output channel: bias, multiplier,
    shift), ``input`` (``ic_lanes`` channels of one pixel a beat), ``bypass`` (one value a
    beat, in output order; only when built with bypass) and ``output`` (one value a beat), or
    instead ``output_wide`` (a beat of 1 to ``CONV_LANES`` values: a ``wide`` conv run's
    output, whose beats ``output`` would cut to their first value). The consumer takes
    one of the two.

    Status: ``busy``; ``error``, the :class:`~spec.params.ConfigError` of the last refused
    configuration (``OK`` when the last one was accepted); ``cycles``, the last run's cycles
    from its configuration to its last output beat; ``compute``, those cycles less the ones
    the engine spent waiting on its streams (:mod:`hw.cycle_counters`); ``runs``,
    configurations handled (run to the end or refused); ``accepted`` and ``refused`` pulse
    when a configuration is checked.
    """

    def __init__(self, params: EngineParams, *, multipliers: str = "dsp", wide: bool = True):
        self._p = p = params
        self._multipliers = multipliers
        #: the requantizer's lanes a wide conv run drains: ``CONV_LANES``, or 1 in an engine
        #: built without the narrow lanes (``wide=False``: only the layer sequencer asks for
        #: wide runs, so a build without it leaves them out, and its ``wide`` runs drain
        #: one channel a cycle)
        self._lanes = CONV_LANES if wide else 1
        members = {
            "cfg": In(stream.Signature(config_layout(p))),
            "weights": In(stream.Signature(unsigned(p.weight_row_bits))),
            "qparams": In(stream.Signature(qparam_layout(p))),
            "input": In(stream.Signature(data.ArrayLayout(signed(p.bits), p.ic_lanes))),
            "output": Out(stream.Signature(signed(p.bits))),
            "output_wide": Out(stream.Signature(wide_beat_layout(p, self._lanes))),
            "busy": Out(1),
            "error": Out(ConfigError),
            "cycles": Out(CYCLE_BITS),
            "compute": Out(CYCLE_BITS),
            "runs": Out(RUN_BITS),
            "accepted": Out(1),
            "refused": Out(1),
        }
        if p.bypass:
            members["bypass"] = In(stream.Signature(signed(p.bits)))
        super().__init__(members)

    @property
    def params(self) -> EngineParams:
        return self._p

    def elaborate(self, platform):
        m = Module()
        p, style = self._p, self._multipliers
        m.submodules.config = config = ConfigUnit(p)
        m.submodules.buffers = buffers = WeightBuffers(p, copies=self._lanes > 1)
        m.submodules.input_buffer = inbuf = InputBuffer(p)
        m.submodules.line_buffer = lb = LineBuffer(p)
        m.submodules.output_stage = out = OutputStage(p, multipliers=style, lanes=self._lanes)
        m.submodules.requant_stage = rq = RequantStage(p, output_credits=out.depth,
                                                       multipliers=style, lend=out.lend,
                                                       lanes=self._lanes)
        m.submodules.sequencer = seq = Sequencer(
            p, credits=rq.group_depth, pending=rq.group_depth + rq.write_latency)
        m.submodules.fetch = fetch = OperandFetch(p)
        m.submodules.array = array = MacArray(p, tag_bits=group_tag_layout(p).size,
                                              multipliers=style)
        m.submodules.counters = counters = CycleCounters(p, group_credits=rq.group_depth)
        layer, sizes, go = config.layer, config.sizes, config.go

        # the streams
        wiring.connect(m, wiring.flipped(self.cfg), config.cfg)
        wiring.connect(m, wiring.flipped(self.weights), buffers.weights)
        wiring.connect(m, wiring.flipped(self.qparams), buffers.qparams)
        wiring.connect(m, wiring.flipped(self.input), inbuf.input)
        wiring.connect(m, seq.issue, fetch.issue)
        wiring.connect(m, fetch.weight_read, buffers.weight_read)
        wiring.connect(m, fetch.input_read, inbuf.read)
        wiring.connect(m, fetch.operands, array.i)
        wiring.connect(m, array.o, rq.groups)
        wiring.connect(m, rq.qparam_read, buffers.qparam_read)
        wiring.connect(m, rq.expand, out.i)
        wiring.connect(m, out.output, wiring.flipped(self.output))
        wiring.connect(m, out.output_wide, wiring.flipped(self.output_wide))
        wiring.connect(m, rq.lane1_read, buffers.lane1_read)
        wiring.connect(m, rq.lane2_read, buffers.lane2_read)
        m.d.comb += [rq.narrow_ok.eq(buffers.narrow_ok), out.i_more.eq(rq.expand_more),
                     out.i_extra.eq(rq.expand_extra)]
        if out.lend:
            m.d.comb += [out.alt_a.eq(rq.prod_a), out.alt_m.eq(rq.prod_m),
                         rq.prod_p.eq(out.alt_p)]
        if p.bypass:
            wiring.connect(m, wiring.flipped(self.bypass), out.bypass)

        m.d.comb += [
            # configuration and run control
            self.busy.eq(config.running), self.error.eq(config.error),
            self.accepted.eq(config.accepted), self.refused.eq(config.refused),
            config.load_done.eq(buffers.done), config.shift_bad.eq(buffers.shift_bad),
            config.table_busy.eq(lb.busy), config.seq_done.eq(seq.done),
            config.drained.eq(seq.idle & rq.idle & out.idle),
            # loading
            buffers.start.eq(config.load_start), buffers.loading.eq(config.loading),
            buffers.rows.eq(sizes.weight_rows), buffers.channels.eq(sizes.qparams),
            # the input and the sequencer
            inbuf.start.eq(config.prepare), inbuf.squeeze.eq(layer.squeeze),
            inbuf.stop.eq(config.run_end), inbuf.rows.eq(layer.h), inbuf.cols.eq(layer.w),
            inbuf.words.eq(sizes.input_words),
            inbuf.read_slot.eq(seq.read_slot), inbuf.release.eq(seq.release),
            seq.pixel_ready.eq(inbuf.pixel_ready),
            seq.go.eq(go), seq.layer.eq(layer), seq.sizes.eq(sizes),
            seq.group_freed.eq(rq.group_freed), seq.squeeze_written.eq(rq.squeeze_written),
            fetch.z_in.eq(layer.z_in), fetch.z_sq.eq(layer.z_sq),
            # the line buffer: rows from the requantizer, words to the operand fetch
            lb.init.eq(config.prepare), lb.rows.eq(layer.h), lb.row_words.eq(sizes.row_words),
            lb.retain.eq(sizes.retain),
            lb.w_en.eq(rq.squeeze.valid), lb.w_row.eq(rq.squeeze.payload.row),
            lb.w_word.eq(rq.squeeze.payload.word), lb.w_lane.eq(rq.squeeze.payload.lane),
            lb.w_data.eq(rq.squeeze.payload.value),
            lb.r_row.eq(fetch.lb_row), lb.r_word.eq(fetch.lb_word),
            fetch.lb_data.eq(lb.r_data),
            # requantizer and output
            rq.layer.eq(layer), rq.go.eq(go), rq.output_freed.eq(out.freed),
            out.layer.eq(layer), out.go.eq(go),
            # counters
            counters.start.eq(config.taken), counters.refused.eq(config.refused),
            counters.done.eq(config.done), counters.running.eq(config.running),
            counters.out_beat.eq(out.beat), counters.go.eq(go),
            counters.input_wait.eq(seq.input_wait), counters.load_wait.eq(buffers.waiting),
            counters.credit_stall.eq(seq.credit_stall), counters.in_run.eq(config.in_run),
            counters.issuing.eq(seq.issuing), counters.congested.eq(out.congested),
            # the requantizer's cycles for the group: a wide run takes CONV_LANES channels a
            # cycle
            counters.group_channels.eq(Mux(rq.wide,
                                           (fetch.group_channels + CONV_LANES - 1) // CONV_LANES,
                                           fetch.group_channels)),
            self.cycles.eq(counters.cycles), self.compute.eq(counters.compute),
            self.runs.eq(counters.runs),
        ]
        return m
