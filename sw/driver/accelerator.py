"""``Accelerator``: a Fire-engine device (a board, or the simulated board) from the host.

    with Accelerator.open("/dev/ttyUSB1", baud=12_000_000) as acc:   # a board
    with sim.board.simulated_accelerator() as acc:                    # the simulated board
        acc.identify()                 # engine parameters, read from the device
        out = acc.run_fire(layer, x)   # one Fire layer, tiled as the device needs
        out = acc.run_conv(conv, x, z_in=z, stride=2)  # a convolution (conv1, conv10)
        acc.counters()

Tiles are planned from the parameters the device reports (``spec.tiling``), never from
constants of the host's own.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

import numpy as np

from spec.frames import decode_values, item_frames, tile_frames
from spec.layers import ConvLayer
from spec.params import ConfigError, EngineParams
from spec.program import SeqError
from spec.protocol import (
    COUNTER_FIELDS,
    Command,
    Identity,
    IdentityError,
    Reply,
    item_bytes,
    unpack_fields,
    unpack_identity,
    value_bytes,
)
from spec.tiling import (
    ConvPlan,
    ConvShape,
    FirePlan,
    PlanError,
    Shape,
    conv_as_1x1,
    lanes_to_ints,
)
from sw.ops import FireLayer

from .errors import DeviceError, DriverError, LinkTimeout, OutputLost, PortError, ProtocolError
from .link import Collected, Link
from .memory import Memory


@dataclass
class FireResult:
    output: np.ndarray  #: (H, W, E1 + E3) int
    cycles: int  #: device cycles, configuration to last output, summed over the runs (tiles)
    compute: int  #: of those, the engine's own: not waiting on the link (see docs/link.md)
    runs: int
    seconds: float  #: wall time of the whole exchange
    bytes_down: int
    bytes_up: int
    payload_down: int
    payload_up: int


class Accelerator:
    """A connected accelerator. Methods raise :class:`~sw.driver.errors.DriverError`s."""

    def __init__(self, port, *, timeout: float = 10.0, retries: int = 4, run_retries: int = 2,
                 closer=None, description: str = ""):
        self.link = Link(port, timeout=timeout, retries=retries)
        self.run_retries = run_retries
        self.description = description
        self._closer = closer
        self._identity: Identity | None = None
        self._memory = None  # Memory, once looked up; False for a device without
        self._loaded = None  # (layer id, shape, bypass) whose weights the device holds

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def open(cls, port: str, baud: int = 12_000_000, *, bring_up: bool = True,
             **kw) -> Accelerator:
        """Open a board on a serial port: reset it, read its parameters and, if it has
        external memory, bring the memory up (``bring_up=False`` leaves it as it is). A
        memory that does not come up does not stop the open: streaming works without it, and
        ``memory.bring_up_result`` says what went wrong."""
        import serial

        try:
            ser = serial.Serial(port, baudrate=baud, timeout=0.05, write_timeout=30)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortError(f"cannot open serial port {port}: {exc}") from None
        acc = cls(ser, closer=ser.close, description=f"{port} at {baud} baud", **kw)
        try:
            acc.reset()
            acc.identify()
            if bring_up and acc.memory is not None:
                acc.memory.bring_up_on_open()
        except BaseException:
            acc.close()
            raise
        return acc

    def close(self) -> None:
        if self._closer:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> Accelerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------
    def reset(self) -> None:
        """RESET the device. A layer program it was running stops; it finishes the memory
        reads and writes it has in flight first (the controller is never left owed data),
        which this waits for, so that the device takes any command after."""
        self.link.reset()
        self._loaded = None
        if self._identity is not None and self._identity.mem_variant:
            deadline = time.monotonic() + 10 * self.link.timeout
            while self.counters()["prog_active"]:
                if time.monotonic() > deadline:
                    raise LinkTimeout("the device's layer program did not stop after RESET")
                time.sleep(0.002)

    def identify(self) -> Identity:
        frame = self._guard(lambda: self.link.request(Command.IDENTIFY))
        if frame.kind != Reply.IDENTITY:
            raise ProtocolError(f"IDENTIFY answered with {frame.kind:#x}")
        try:
            ident = unpack_identity(frame.payload)
        except IdentityError as exc:
            raise ProtocolError(str(exc)) from None
        self._identity = ident
        self.link.window = ident.rx_slots
        return ident

    @property
    def identity(self) -> Identity:
        return self._identity or self.identify()

    @property
    def params(self) -> EngineParams:
        return self.identity.params

    @property
    def memory(self) -> Memory | None:
        """The device's external memory (``sw.driver.memory.Memory``), None without."""
        if self._memory is None:
            self._memory = Memory.of(self) or False
        return self._memory or None

    def _transact(self, frames: list, expect: int) -> list:
        """Send frames, each answered by a reply of kind ``expect`` (else ProtocolError)."""
        replies = self._guard(lambda: self.link.transact(frames))
        for (command, _), reply in zip(frames, replies, strict=True):
            if reply.kind != expect:
                raise ProtocolError(f"{Command(command).name} answered with {reply.kind:#x}")
        return replies

    def _request(self, command: int, payload: bytes, expect: int):
        return self._transact([(command, payload)], expect)[0]

    def counters(self) -> dict:
        frame = self._guard(lambda: self.link.request(Command.READ_COUNTERS))
        if frame.kind != Reply.COUNTERS:
            raise ProtocolError(f"READ_COUNTERS answered with {frame.kind:#x}")
        return unpack_fields(COUNTER_FIELDS, frame.payload)

    def plan(self, shape: Shape, bypass: bool = False) -> FirePlan:
        return FirePlan(self.params, shape, bypass=bypass)

    # -- resident mode ------------------------------------------------------------------
    def load(self, qnet, input_shape=None, *, verify: bool = True, progress=None):
        """Write ``qnet``'s layer program and weights into the device's memory once (checked
        by reading them back); returns a :class:`~sw.driver.resident.ResidentNetwork`, whose
        ``infer(image)`` runs it. ``input_shape`` defaults to the network's own input."""
        from .resident import ResidentNetwork

        net = qnet.net
        shape = input_shape or (net.default_input, net.default_input, net.in_channels)
        return ResidentNetwork(self, qnet, shape, verify=verify, progress=progress)

    def start_program(self, addr: int) -> int:
        """Start the layer program at byte address ``addr``; returns the device's count of
        finished programs before it (for :meth:`wait_program`)."""
        before = self.counters()["programs"]
        self._request(Command.RUN_PROGRAM, struct.pack("<I", addr), Reply.ACK)
        return before

    def wait_program(self, before: int, *, timeout: float | None = None) -> dict:
        """Wait for the program started after ``before`` programs to end; its counters.
        A program that stopped on an error raises :class:`DeviceError` naming it."""
        limit = timeout if timeout is not None else 60 * self.link.timeout
        deadline = time.monotonic() + limit
        while True:
            c = self.counters()
            if (c["programs"] - before) & 0xFFFFFFFF and not c["prog_active"]:
                break
            if time.monotonic() > deadline:
                raise LinkTimeout(f"the layer program did not finish in {limit:.0f} s")
            time.sleep(0.002)
        if c["prog_status"] != SeqError.OK:
            code = c["prog_status"]
            name = SeqError(code).name if code in SeqError._value2member_map_ else str(code)
            detail = c["prog_detail"]
            if code == SeqError.CONFIG and detail in ConfigError._value2member_map_:
                err = ConfigError(detail)
                why = f"the engine refused its configuration: {err.field}: {err.message}"
            else:
                why = f"{name} (detail {detail})"
            raise DeviceError(f"the layer program stopped at descriptor {c['prog_index']}: "
                              f"{why}", code=code, field="program")
        return c

    def run_program(self, addr: int, *, timeout: float | None = None) -> dict:
        """Run the layer program at ``addr`` to its end; the device's counters after it."""
        return self.wait_program(self.start_program(addr), timeout=timeout)

    # -- Fire layers --------------------------------------------------------------------
    def run_fire(self, layer: FireLayer, x: np.ndarray, *, progress=None) -> FireResult:
        """Run one Fire layer on ``x`` (H, W, Cin) int; returns its (H, W, E1+E3) output.

        A run whose output came back incomplete or corrupted is run again (after a
        device reset), at most ``run_retries`` times; it is never returned short.
        """
        x = np.asarray(x, dtype=np.int64)
        cin, s, e1, e3 = layer.shape
        h, w = x.shape[:2]
        if x.shape[2] != cin:
            raise DriverError(f"input has {x.shape[2]} channels, the layer expects {cin}")
        plan = self.plan(Shape(h, w, cin, s, e1, e3), bypass=layer.bypass is not None)
        for attempt in range(self.run_retries + 1):
            try:
                return self._guard(lambda: self._run_plan(plan, layer, x, progress))
            except OutputLost:
                if attempt == self.run_retries:
                    raise
                self.reset()
        raise AssertionError("unreachable")

    def run_fire_batch(self, layer: FireLayer, xs: list[np.ndarray]) -> list[FireResult]:
        """Run one Fire layer on several inputs, loading each tile's weights only once
        (tiles then squeeze every input again instead of keeping its squeeze map)."""
        xs = [np.asarray(x, dtype=np.int64) for x in xs]
        if len(xs) <= 1:
            return [self.run_fire(layer, x) for x in xs]
        cin, s, e1, e3 = layer.shape
        h, w = xs[0].shape[:2]
        plan = FirePlan(self.params, Shape(h, w, cin, s, e1, e3),
                        bypass=layer.bypass is not None, retain=False)
        for attempt in range(self.run_retries + 1):
            try:
                return self._guard(lambda: self._run_batch(plan, layer, xs))
            except OutputLost:
                if attempt == self.run_retries:
                    raise
                self.reset()
        raise AssertionError("unreachable")

    # -- convolutions (conv1, conv10) --------------------------------------------------
    def run_conv(self, conv: ConvLayer, x: np.ndarray, *, z_in: int, stride: int = 1,
                 pad: int = 0) -> ConvResult:
        """Run one convolution (conv1, conv10) on ``x`` (H, W, Cin) int with input zero
        point ``z_in``; returns its (H', W', Cout) output.

        It runs in the engine's 1x1-convolution mode (:class:`spec.tiling.ConvPlan`: blocks
        of output channels and of pixels), a kernel larger than 1x1 with its windows packed
        into channels (:mod:`spec.windows`). A run whose output came back incomplete or
        corrupted is run again after a device reset, as in :meth:`run_fire`.
        """
        try:
            plan, layer, x1 = conv_plan(self.params, conv, x, z_in=z_in, stride=stride,
                                        pad=pad)
        except PlanError as exc:
            raise DriverError(f"the device cannot run this convolution: {exc}") from None
        for attempt in range(self.run_retries + 1):
            try:
                return self._guard(lambda: _conv_runs(self, plan, layer, z_in, x1))
            except OutputLost:
                if attempt == self.run_retries:
                    raise
                self.reset()
        raise AssertionError("unreachable")

    def _run_plan(self, plan: FirePlan, layer: FireLayer, x, progress) -> FireResult:
        stats0 = _snapshot(self.link.stats)
        start = time.perf_counter()
        outputs, dones = [], []
        key = (id(layer), plan.shape, plan.bypass)
        for tile in plan.tiles:
            load = not (len(plan.tiles) == 1 and self._loaded == key)
            out, done = self._run_tile(plan, tile, layer, x, load, progress)
            outputs.append(out)
            dones.append(done)
        if len(plan.tiles) == 1:
            self._loaded = key
        return self._result(plan, [outputs], [dones], stats0, start)[0]

    def _run_batch(self, plan: FirePlan, layer: FireLayer, xs) -> list[FireResult]:
        stats0 = _snapshot(self.link.stats)
        start = time.perf_counter()
        outputs = [[] for _ in xs]
        dones = [[] for _ in xs]
        for tile in plan.tiles:
            for j, x in enumerate(xs):
                out, done = self._run_tile(plan, tile, layer, x, j == 0, None)
                outputs[j].append(out)
                dones[j].append(done)
        self._loaded = (id(layer), plan.shape, plan.bypass) if len(plan.tiles) == 1 else None
        return self._result(plan, outputs, dones, stats0, start)

    def _result(self, plan, outputs, dones, stats0, start) -> list[FireResult]:
        stats = _snapshot(self.link.stats)
        delta = {k: (stats[k] - stats0[k]) // len(outputs) for k in stats}
        seconds = (time.perf_counter() - start) / len(outputs)
        return [FireResult(plan.assemble(out), sum(d.cycles for d in done),
                           sum(d.compute for d in done), len(plan.tiles), seconds,
                           delta["bytes_down"], delta["bytes_up"], delta["payload_down"],
                           delta["payload_up"]) for out, done in zip(outputs, dones, strict=True)]

    def _run_tile(self, plan: FirePlan, tile, layer: FireLayer, x, load: bool, progress):
        """One run: configure, (load), stream the input; the tile's output and its DONE."""
        p = plan.p
        frames = tile_frames(plan, tile, layer, x, load=load)
        self._loaded = None
        if progress is not None:
            progress(0, len(frames))
        result = self._run_frames(frames, int(np.prod(plan.tile_output_shape(tile))), p)
        if progress is not None:
            progress(len(frames), len(frames))
        return result

    def _run_frames(self, frames: list, values: int, p: EngineParams):
        """Send one run's frames and collect its output until its DONE: ``(values, done)``;
        a failed run, an output short of ``values`` or a malformed one is an error."""
        expected = values * value_bytes(p)
        collect = Collected()
        self.link.transact(frames, collect=collect, until=lambda c: bool(c.done))
        done = collect.done[-1]
        if done.error:
            raise DeviceError(f"the device failed the run: error {done.error}",
                              code=done.error)
        if len(collect.output) != expected:
            raise OutputLost(f"expected {expected} output bytes, got {len(collect.output)}")
        try:
            return decode_values(bytes(collect.output), p.bits), done
        except ValueError as e:
            raise ProtocolError(f"the device's output is malformed: {e}") from None

    def _guard(self, action):
        """Run ``action``; on Ctrl-C, reset the device so the next command works."""
        try:
            return action()
        except KeyboardInterrupt:
            try:
                self.reset()
            except DriverError:
                pass
            raise


@dataclass
class ConvResult(FireResult):
    """A convolution run on the device: ``output`` (H', W', cout) int, and the figures of a
    Fire layer's result, ``runs`` being the engine's runs (channel blocks x pixel blocks)."""


def conv_plan(params: EngineParams, conv: ConvLayer, x, *, z_in: int, stride: int = 1,
              pad: int = 0) -> tuple[ConvPlan, ConvLayer, np.ndarray]:
    """How a convolution of ``x`` runs on an engine with ``params``: ``(plan, 1x1 layer, its
    input)``, the windows packed into channels unless the kernel is 1x1
    (:func:`spec.tiling.conv_as_1x1`); :class:`spec.tiling.PlanError` if it cannot."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 3 or x.shape[2] != conv.weight.shape[1]:
        raise PlanError(f"input {x.shape} does not have the layer's {conv.weight.shape[1]} "
                        f"channels")
    try:
        layer, x1 = conv_as_1x1(conv, x, z_in, stride=stride, pad=pad, lanes=params.ic_lanes)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    plan = ConvPlan(params, ConvShape(*x1.shape, conv.out_channels), relu=bool(conv.rq.relu))
    plan.check_layer(layer)
    return plan, layer, x1


def _conv_runs(acc: Accelerator, plan: ConvPlan, layer: ConvLayer, z_in: int,
               x1) -> ConvResult:
    p = plan.p
    sizes = item_bytes(p)
    stats0 = _snapshot(acc.link.stats)
    start = time.perf_counter()
    acc._loaded = None  # the convolution's weights replace any Fire layer's
    outputs, dones = [], []
    for run in plan.runs:
        word = plan.config(run, layer, z_in)
        frames = [(Command.CONFIGURE, word.to_bytes(sizes[Command.CONFIGURE], "little"))]
        if run.load:
            frames += item_frames(Command.LOAD_WEIGHTS,
                                  lanes_to_ints(plan.weight_rows(run, layer), p.bits),
                                  sizes[Command.LOAD_WEIGHTS])
            frames += item_frames(Command.LOAD_QPARAMS, plan.qparams(run, layer),
                                  sizes[Command.LOAD_QPARAMS])
        frames += item_frames(Command.RUN_INPUT,
                              lanes_to_ints(plan.input_words(run, x1), p.bits),
                              sizes[Command.RUN_INPUT])
        values, done = acc._run_frames(frames, plan.run_outputs(run), p)
        outputs.append(values)
        dones.append(done)
    stats = _snapshot(acc.link.stats)
    delta = {k: stats[k] - stats0[k] for k in stats}
    return ConvResult(plan.assemble(outputs), sum(d.cycles for d in dones),
                      sum(d.compute for d in dones), len(plan.runs),
                      time.perf_counter() - start, delta["bytes_down"], delta["bytes_up"],
                      delta["payload_down"], delta["payload_up"])


def _snapshot(stats) -> dict:
    return dict(vars(stats))
