"""8N1 UART: the Arty's FT2232H link (TXD/RXD only, no flow control).

The receiver cannot be stalled (a UART has no backpressure): ``o`` offers each byte for as
long as the next one takes to arrive, and a byte not taken by then counts as an overrun.
The protocol above never lets that happen (the host sends only into free frame buffers).
"""


from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

#: Largest bit-rate error accepted between the divided clock and the nominal baud.
MAX_BAUD_ERROR = 0.01


def baud_divisor(clock_hz: int, baud: int) -> int:
    """Clocks per bit; raises ``ValueError`` naming the baud when the error exceeds 1%."""
    if baud <= 0 or clock_hz < 4 * baud:
        raise ValueError(f"baud={baud}: needs at least 4 clocks per bit at {clock_hz} Hz")
    divisor = round(clock_hz / baud)
    error = abs(clock_hz / divisor - baud) / baud
    if error > MAX_BAUD_ERROR:
        raise ValueError(f"baud={baud}: {clock_hz / 1e6:g} MHz / {divisor} is "
                         f"{error * 100:.2f}% off (at most {MAX_BAUD_ERROR * 100:g}%)")
    return divisor


class _Serial(wiring.Component):
    """A UART side clocked at ``divisor`` clocks per bit."""

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"divisor={divisor}: at least 4 clocks per bit")
        self._divisor = divisor
        super().__init__()


class UARTRx(_Serial):
    """Receiver: ``rx`` is the pin; ``o`` the bytes; ``framing_error``/``overrun`` pulse."""

    rx: In(1, init=1)
    o: Out(stream.Signature(8))
    framing_error: Out(1)
    overrun: Out(1)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        # two flip-flops against metastability; the line idles high
        sync1 = Signal(init=1)
        line = Signal(init=1)
        m.d.sync += [sync1.eq(self.rx), line.eq(sync1)]
        timer = Signal(range(div + 1))
        bit = Signal(range(10))
        shift = Signal(8)
        with m.If(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(div // 2 - 1)
                    m.next = "START"
            with m.State("START"):  # sample the middle of the start bit
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.next = "IDLE"  # a glitch, not a start bit
                with m.Else():
                    m.d.sync += [timer.eq(div - 1), bit.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shift.eq((line << 7) | (shift >> 1)), timer.eq(div - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(line):
                    m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1)]
                    with m.If(self.o.valid & ~self.o.ready):
                        m.d.comb += self.overrun.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += self.framing_error.eq(1)
                    m.next = "BREAK"
            with m.State("BREAK"):  # wait for the line to return high
                with m.If(line):
                    m.next = "IDLE"
        return m


class UARTTx(_Serial):
    """Transmitter: bytes from ``i`` onto the ``tx`` pin (registered)."""

    i: In(stream.Signature(8))
    tx: Out(1, init=1)

    def elaborate(self, platform):
        m = Module()
        div = self._divisor
        timer = Signal(range(div))
        shift = Signal(10, init=0x3FF)
        bits = Signal(range(11))
        with m.If(bits == 0):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.sync += [shift.eq((1 << 9) | (self.i.payload << 1)), bits.eq(10),
                             timer.eq(div - 1), self.tx.eq(0)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [shift.eq((1 << 9) | (shift >> 1)), bits.eq(bits - 1),
                         timer.eq(div - 1), self.tx.eq((shift >> 1)[0])]
            with m.If(bits == 1):
                m.d.sync += [self.tx.eq(1), timer.eq(0)]
        return m
