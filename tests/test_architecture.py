"""The packages' one-way dependencies (docs/architecture.md): spec is plain Python that
gateware, driver and tools all read; the contracts in pyproject.toml hold the rest."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ["spec." + p.stem for p in sorted((ROOT / "spec").glob("*.py")) if p.stem != "__init__"]


def test_spec_imports_no_amaranth_and_nothing_else_of_the_project():
    """Imported in a fresh interpreter, every spec module loads neither Amaranth nor any other
    package of the project: the driver and the tools can read it without the HDL."""
    code = ("import importlib, json, sys\n"
            f"for m in {SPEC!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('amaranth', 'amaranth_boards', 'hw', 'sw', 'sim', 'boards'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert len(SPEC) >= 7  # params, protocol, quant, layers, tiling, cost, cli
    assert json.loads(out) == []


def test_import_contracts_are_kept():
    """``lint-imports`` (import-linter, the contracts in pyproject.toml) passes."""
    exe = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
