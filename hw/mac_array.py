"""The MAC array: ``ic_lanes x oc_lanes`` multipliers shared by squeeze and both expands.

Each cycle it takes ``ic_lanes`` activations of one pixel (broadcast to every output lane),
a row of ``oc_lanes x ic_lanes`` weights, and accumulates one dot product per output lane.
``first`` starts a new reduction and ``last`` ends it: ``latency`` cycles after a ``last``
beat, ``o`` carries the ``oc_lanes`` sums. It never stalls; the engine reserves room for
its results before issuing. Only the control bits (``first``, ``last``, valid) are reset: the
data registers need none, and a reset reaching thousands of them is a slow net.

``multipliers`` chooses how the products are built; only the latency differs:

* ``"dsp"``: ``d * w`` registered twice, which Xilinx synthesis packs into the DSP48E1's M
  and P registers; with an even ``ic_lanes`` the adder tree's first level is in the DSP
  blocks' post-adders: an odd lane's DSP takes its operands a register later (its A and B
  registers) and adds its even neighbour's product (P) to its own, so the tree in the
  fabric starts from ``ic_lanes / 2`` pair sums (on the Arty's 16 x 5 array, 2,391 LUTs
  alone -> 1,355), at the same latency: its last level is the accumulator's adder.
* ``"mult18x18d"``: for the ECP5, whose multipliers yosys leaves combinational: each
  product comes from :func:`hw.dsp.registered_product` (a MULT18X18D with its input and
  output registers on an ECP5 platform), then one register in the fabric.
* ``"lut"``: shifted partial products added in the fabric, a register after every adder
  level, in the products and in the tree: for devices short of DSP blocks.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spec.params import EngineParams

from .arith import delay
from .dsp import registered_product

#: product styles (see the module docstring)
MULTIPLIERS = ("dsp", "mult18x18d", "lut")


def array_in_layout(p: EngineParams, tag_bits: int) -> data.StructLayout:
    return data.StructLayout({
        "act": data.ArrayLayout(signed(p.bits), p.ic_lanes),  # raw activations
        "weights": data.ArrayLayout(data.ArrayLayout(signed(p.bits), p.ic_lanes), p.oc_lanes),
        "z": signed(p.bits),  # activation zero point, subtracted before multiplying
        "pad": 1,  # this tap is padding: it contributes exactly zero
        "first": 1,
        "last": 1,
        "tag": unsigned(max(1, tag_bits)),
    })


def array_out_layout(p: EngineParams, tag_bits: int) -> data.StructLayout:
    return data.StructLayout({
        "acc": data.ArrayLayout(signed(p.acc_bits), p.oc_lanes),
        "tag": unsigned(max(1, tag_bits)),
    })


def tree_registers(terms: int, every_level: bool = False) -> int:
    """Pipeline registers of the adder tree: one every two levels (or every level), and one
    at the end."""
    levels = (terms - 1).bit_length()
    if every_level:
        return levels
    return (levels + 1) // 2 if levels else 0


class MacArray(wiring.Component):
    """Time-shared multiply-accumulate array (see module docstring)."""

    def __init__(self, params: EngineParams, tag_bits: int = 1, *, multipliers: str = "dsp"):
        if multipliers not in MULTIPLIERS:
            raise ValueError(f"multipliers must be one of {MULTIPLIERS}, not {multipliers!r}")
        self._p = params
        self._style = multipliers
        #: a register after every adder-tree level, where no DSP cascade adds for us
        self._tree_every_level = multipliers != "dsp"
        super().__init__({
            "i": In(stream.Signature(array_in_layout(params, tag_bits), always_ready=True)),
            "o": Out(stream.Signature(array_out_layout(params, tag_bits), always_ready=True)),
        })
        #: product registers: the DSP's M and P registers (or its input and output registers
        #: and one in the fabric), or one per adder level in LUTs
        self._mult_regs = {"dsp": 2, "mult18x18d": 3,
                           "lut": max(1, (params.bits - 1).bit_length())}[multipliers]
        #: cycles from a ``last`` input beat to its ``o`` beat
        self.latency = (1 + self._mult_regs
                        + tree_registers(params.ic_lanes, self._tree_every_level) + 1)

    def elaborate(self, platform):
        m = Module()
        p, i = self._p, self.i.payload
        ic, oc, bits = p.ic_lanes, p.oc_lanes, p.bits

        # Stage 1: zero-point subtraction. A padded tap becomes a real zero, and so does an
        # idle cycle, which then leaves the accumulators unchanged.
        d = [Signal(signed(bits + 1), name=f"d{k}", reset_less=True) for k in range(ic)]
        # -d, for LUT multipliers
        nd = [Signal(signed(bits + 2), name=f"nd{k}", reset_less=True) for k in range(ic)]
        w = [[Signal(signed(bits), name=f"w{o}_{k}", reset_less=True) for k in range(ic)]
             for o in range(oc)]
        for k in range(ic):
            zero = i.pad | ~self.i.valid
            m.d.sync += d[k].eq(Mux(zero, 0, i.act[k] - i.z))
            if self._style == "lut":
                m.d.sync += nd[k].eq(Mux(zero, 0, i.z - i.act[k]))
            for o in range(oc):
                m.d.sync += w[o][k].eq(i.weights[o][k])
        # Stages 2-3: products, registered twice (the multiplier's M and P registers).
        sums = []
        pair = self._style == "dsp" and ic % 2 == 0
        if pair:
            # the odd lanes' activations a cycle later (their DSPs' A registers)
            d_late = {k: Signal.like(d[k], name=f"dl{k}") for k in range(1, ic, 2)}
            m.d.sync += [late.eq(d[k]) for k, late in d_late.items()]
        for o in range(oc):
            terms = []
            if pair:
                # the first adder level in the DSP48E1s' post-adders: an even lane's product
                # (M, P) goes into its odd neighbour's adder, whose operands are a register
                # later (A, B), so the pair's sum is its P register, when the tree's first
                # register would have been
                for k in range(0, ic, 2):
                    pa = Signal(signed(2 * bits + 1), name=f"p{o}_{k}", reset_less=True)
                    pa_r = Signal(signed(2 * bits + 1), name=f"pr{o}_{k}", reset_less=True)
                    wb = Signal(signed(bits), name=f"wl{o}_{k + 1}", reset_less=True)
                    pb = Signal(signed(2 * bits + 1), name=f"p{o}_{k + 1}", reset_less=True)
                    s = Signal(signed(2 * bits + 2), name=f"ps{o}_{k}", reset_less=True)
                    m.d.sync += [pa.eq(d[k] * w[o][k]), pa_r.eq(pa), wb.eq(w[o][k + 1]),
                                 pb.eq(d_late[k + 1] * wb), s.eq(pb + pa_r)]
                    terms.append(s)
                sums.append(self._pair_tree(m, terms, f"t{o}", tree_registers(ic) - 1))
                continue
            for k in range(ic):
                prod_r = Signal(signed(2 * bits + 1), name=f"pr{o}_{k}", reset_less=True)
                if self._style == "lut":
                    self._lut_multiply(m, d[k], nd[k], w[o][k], prod_r, f"lm{o}_{k}")
                elif self._style == "mult18x18d":
                    prod = registered_product(m, platform, d[k], w[o][k], f"p{o}_{k}",
                                              primitive=True)
                    m.d.sync += prod_r.eq(prod)
                else:
                    prod = Signal(signed(2 * bits + 1), name=f"p{o}_{k}", reset_less=True)
                    m.d.sync += [prod.eq(d[k] * w[o][k]), prod_r.eq(prod)]
                terms.append(prod_r)
            sums.append(self._adder_tree(m, terms, f"t{o}",
                                         every_level=self._tree_every_level))
        ctl_delay = 1 + self._mult_regs + tree_registers(ic, self._tree_every_level)
        first = delay(m, i.first & self.i.valid, ctl_delay, "first")
        last = delay(m, i.last & self.i.valid, ctl_delay, "last")
        tag = delay(m, i.tag, ctl_delay, "tag", reset_less=True)
        # Accumulate; a reduction's result leaves on the cycle after its last beat.
        for o in range(oc):
            acc = Signal(signed(p.acc_bits), name=f"acc{o}", reset_less=True)
            # the tree's last terms (one, or two whose addition is the accumulator's)
            total = sum(sums[o][1:], sums[o][0])
            m.d.sync += acc.eq(Mux(first, total, acc + total))
            m.d.comb += self.o.payload.acc[o].eq(acc)
        valid = Signal()
        m.d.sync += valid.eq(last)
        tag_out = Signal.like(tag, reset_less=True)
        m.d.sync += tag_out.eq(tag)
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.tag.eq(tag_out)]
        return m

    @staticmethod
    def _lut_multiply(m, a, neg_a, b, out, name):
        """``out`` = ``a * b`` (both signed) from partial products: bit ``j`` of ``b``
        selects ``a << j`` (the sign bit selects ``-a``, computed beside ``a``), then a tree of
        adders with a register after every level (the last one is ``out``)."""
        n = len(b)
        width = len(a) + n + 1
        terms = [Mux(b[j], (neg_a if j == n - 1 else a.as_signed()) << j, 0)
                 for j in range(n)]
        level = 0
        while len(terms) > 1:
            nxt = []
            for k in range(0, len(terms), 2):
                r = out if len(terms) <= 2 else Signal(signed(width), reset_less=True,
                                                      name=f"{name}_l{level}_{k}")
                m.d.sync += r.eq(sum(terms[k:k + 2]))
                nxt.append(r)
            terms = nxt
            level += 1
        if level == 0:  # a one-bit operand
            m.d.sync += out.eq(terms[0])

    @staticmethod
    def _add_pairs(m, terms, name, level, registered):
        """One adder-tree level: ``terms`` added in pairs (an odd one out passed on),
        registered or not."""
        nxt = []
        for k in range(0, len(terms), 2):
            pair = terms[k:k + 2]
            width = max(len(t) for t in pair) + 1
            s = Signal(signed(width), name=f"{name}_l{level}_{k}", reset_less=True)
            m.d["sync" if registered else "comb"] += s.eq(sum(pair[1:], pair[0]))
            nxt.append(s)
        return nxt

    @classmethod
    def _pair_tree(cls, m, terms, name, registers):
        """The pair sums (registered, at the cycle of the plain tree's first register) added
        up to two terms with ``registers`` registers on the way (the last levels'), the
        final addition in the accumulator's adder: the plain tree's latency."""
        levels = max(0, (len(terms) - 1).bit_length() - 1)
        assert registers <= levels, (registers, levels)
        level = 0
        while len(terms) > 2:
            terms = cls._add_pairs(m, terms, name, level, levels - 1 - level < registers)
            level += 1
        return terms

    @classmethod
    def _adder_tree(cls, m, terms, name, every_level=False):
        level = 0
        while len(terms) > 1:
            registered = every_level or level % 2 == 1 or len(terms) <= 2
            terms = cls._add_pairs(m, terms, name, level, registered)
            level += 1
        return terms
