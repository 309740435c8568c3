"""Build caches shared by the tools that generate or compile things (Verilator models, the
LiteDRAM controller): an exclusive lock per build directory across processes, and a scratch
directory that is renamed into place when complete, so a killed build never leaves a
directory that looks built."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def build_lock(target: Path):
    """Hold an exclusive lock on ``target`` (a build directory) across processes and threads:
    an ``flock`` on ``<target>.lock`` beside it, released when the block ends (or its process
    dies). Concurrent callers building the same thing wait for each other."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def scratch_dir(target: Path) -> Path:
    """A new empty directory beside ``target``, to build in and then :func:`publish`. The
    caller holds :func:`build_lock`, so leftovers of builds killed before they published are
    removed here."""
    for stale in target.parent.glob(f".{target.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def publish(scratch: Path, target: Path) -> None:
    """Move a finished build into place with one rename (under :func:`build_lock`): ``target``
    is either absent, the old complete build, or the new complete one, never half of one."""
    if target.exists():
        old = scratch.parent / f".{target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(scratch, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(scratch, target)
