"""Build caches shared by the tools that generate or compile things (Verilator models, the
LiteDRAM controller): an exclusive lock per build directory across processes, and a scratch
directory that is renamed into place when complete, so a killed build never leaves a
directory that looks built."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
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


def prune(target: Path, *, keep: int = 16, min_age: float = 3600.0) -> list[Path]:
    """Remove the builds beside ``target`` made under the same name with other content
    (``<name>_<key>``, ``target`` being one of them), so that a cache keyed by content does not
    grow with every change of the design: all but the ``keep`` most recently used, and of those
    only the ones unused for ``min_age`` seconds whose lock nobody holds (a build or a run in
    progress keeps its directory). Returns what it removed. A build's user marks it used with
    :func:`touch`."""
    stem = target.name.rsplit("_", 1)[0]
    siblings = [p for p in target.parent.glob(f"{stem}_*")
                if p.is_dir() and p != target and p.name.rsplit("_", 1)[0] == stem]
    siblings.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    now = time.time()
    removed = []
    for old in siblings[max(keep - 1, 0):]:
        if now - old.stat().st_mtime < min_age:
            continue
        lock = old.parent / f"{old.name}.lock"
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            try:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    return removed


def touch(target: Path) -> None:
    """Mark a build used now (what :func:`prune` keeps by)."""
    try:
        os.utime(target)
    except OSError:
        pass
