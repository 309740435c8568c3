"""Stream helpers for the Amaranth-simulator tests of the engine's components, after the
``lib.stream`` documentation's ``stream_get`` / ``stream_put``."""

from __future__ import annotations

from amaranth.hdl import ValueCastable


def _raw(target):
    """``target`` as a plain value (a struct payload is set and read as its bits)."""
    return target.as_value() if isinstance(target, ValueCastable) else target


async def stream_put(ctx, stream, payload, *, gaps=None, limit: int = 10_000):
    """Offer ``payload`` on ``stream`` until it is taken; ``gaps`` (an iterator of bools)
    holds ``valid`` low for a cycle wherever it yields True."""
    if gaps is not None:
        while next(gaps):
            await ctx.tick()
    target = stream.payload
    if isinstance(payload, int):
        target = _raw(target)
    ctx.set(target, payload)
    ctx.set(stream.valid, 1)
    for _ in range(limit):
        if ctx.get(stream.ready):
            break
        await ctx.tick()
    else:
        raise AssertionError(f"stream not ready within {limit} cycles")
    await ctx.tick()
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, stalls=None, limit: int = 10_000):
    """Take one payload from ``stream`` (its raw bits for a struct); ``stalls`` (an iterator
    of bools) holds ``ready`` low for a cycle wherever it yields True."""
    for _ in range(limit):
        ready = not (stalls is not None and next(stalls))
        ctx.set(stream.ready, ready)
        payload = ctx.get(_raw(stream.payload))
        valid = ctx.get(stream.valid)
        await ctx.tick()
        if ready and valid:
            ctx.set(stream.ready, 0)
            return payload
    raise AssertionError(f"stream not valid within {limit} cycles")


def randomly(rng, p: float):
    """An endless iterator of bools, each True with probability ``p``."""
    while True:
        yield bool(rng.random() < p)
