"""``make mutate``: mutation testing of the arithmetic, the MAC array, the line buffer, the
golden model's arithmetic and the tile planner against their fast unit tests.

mutmut 3 puts one small change at a time (a flipped comparison, an off-by-one constant, a
dropped argument) into ``MODULES`` and runs the tests that reach the changed function; a
mutant the tests do not notice *survives*. This runs in a copy of the tree (``--workdir``,
by default under /tmp), never in this one: mutmut writes its ``mutants/`` folder beside the
sources, and others edit this tree meanwhile. It prints the score per module and every
survivor, marking those listed as equivalent (``mutation_equivalents.tsv``), and exits
with status 1 when a survivor is not one of them.

    python tests/mutate.py [--workdir DIR] [--max-children N] [--report-only]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ["hw/arith.py", "hw/mac_array.py", "hw/line_buffer.py", "spec/quant.py",
           "spec/tiling.py"]
TESTS = ["tests/test_arith.py", "tests/test_mac_array.py", "tests/test_mac_array_pipeline.py",
         "tests/test_line_buffer.py", "tests/test_quant.py", "tests/test_tiling.py"]
#: copied into the work directory (what the tests import)
SOURCES = ["spec", "hw", "sw", "sim", "boards", "tests", "pyproject.toml"]
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".hypothesis")

#: Surviving mutants that behave exactly like the original, one a line: module:function,
#: reason (a key of ``REASONS``), original line, mutated line (as ``mutmut show`` prints them,
#: stripped), tab-separated. A survivor not listed there is reported as a finding.
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.tsv")

#: Why a listed mutant is equivalent (docs/testing.md has an example of each).
REASONS = {
    "name": "a signal, instance or default name: it labels the netlist and waveforms only",
    "wider": "a wider field, port, counter or intermediate signal: every value that occurs "
             "fits either way",
    "slack": "the intermediate keeps a spare bit: a partial sum of a product's partial "
             "products is a product of the multiplicand and part of the multiplier",
    "chunks": "a latency formula whose operand width gives the same number of 17-bit chunks "
              "(so the same pipeline depth) for every width used",
    "saturation": "the pre-clamp saturation in round_shift_clamp has slack: any |r| of "
                  "2**bits or more lands outside [lo, hi] once the zero point is added, so "
                  "the final clamp gives the same y",
    "sign-bit": "the value has at least two sign bits (|a*b| < 2**(aw+bw-1) in aw+bw+1 "
                "bits), so bit -2 equals bit -1",
    "clamp-tie": "at total == hi (or lo) both branches give hi (lo)",
    "wrap": "+2**(keep-1) does not fit signed(keep) and wraps to -2**(keep-1), the original",
    "comb": "a combinational signal: reset_less has no effect on it",
    "like": "Signal.like copies reset_less from its (reset-less) model",
    "slice": "Amaranth clips a slice at the value's width: the last chunk has the same bits",
    "carry": "the odd term of a level is always the last one, and past the first level every "
             "shift is 0 (the first level has an even number of terms: the 31-bit multiplier "
             "is two chunks)",
    "assert": "a weaker assertion that holds either way",
    "unreachable": "the branch cannot run: EngineParams.validate or the code before it rules "
                   "out its condition (weights of at least 2 bits; a 31-bit multiplier is "
                   "two chunks; a tile has channels; weight_depth holds a 3x3 group)",
    "dead": "the attribute is never read",
    "explicit": "a default that every caller overrides",
    "style": "the pipelines only tell 'mult18x18d' from the other styles: any other default "
             "behaves like 'dsp'",
    "levels": "with no adder level, (0 + 1) // 2 is 0 too",
    "lut-level": "level only names the intermediates and guards the one-bit-operand branch, "
                 "which cannot run",
    "same-count": "the adder tree registers the same number of levels (level parity is kept): "
                  "the same latency and results",
    "power-of-two": "ic_lanes is a power of two, so the adder tree never has an odd pair or "
                    "three terms",
    "ring": "the 2-bit slot counter counts 0, 3, 2 and is reset at 2: the same three slots",
    "bank": "with one bank every valid address has zero bank bits; with several, the same "
            "expression is taken",
    "bigger-ram": "only the last bank's depth grows: a larger RAM holds the same words",
    "min-bound": "the bound is never reached: the value lies inside it by construction",
    "same-value": "at n == SHIFT_MAX both branches compute round(frac * 2**31)",
    "all-zero": "differs only when every |acc| (or m) is 0, where both paths give 0",
    "fast-path": "a fast path and the general path give the same results; only speed differs",
    "float64": "the reference is already float64, so the difference converts the test "
               "values exactly",
    "numpy": "NumPy takes any negative dimension in reshape as the one to infer",
    "last-tile": "the last tile of a tiled plan is never its first: None is falsy like False",
    "no-squeeze": "weight_rows reads cin only for a run that squeezes: with squeeze=False "
                  "(or None, falsy like it) the expand rows alone are counted",
}


def setup_cfg() -> str:
    lines = ["[mutmut]", "source_paths =", "    spec", "    hw", "    sw", "    sim", "    boards",
             "only_mutate ="] + [f"    {m}" for m in MODULES]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in TESTS]
    return "\n".join(lines) + "\n"


def prepare(workdir: Path) -> None:
    """A fresh copy of the sources in ``workdir``, and no earlier mutants (mutmut keeps the
    copies it made of the unmutated modules, which would go stale)."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / "mutants", ignore_errors=True)
    for name in SOURCES:
        src, dst = ROOT / name, workdir / name
        if dst.is_dir():
            shutil.rmtree(dst)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=SKIP)
        else:
            shutil.copy2(src, dst)
    # mutmut reads [tool.mutmut] from pyproject.toml, else setup.cfg: the copy gets one
    (workdir / "setup.cfg").write_text(setup_cfg())


def mutmut(workdir: Path, *args: str, capture: bool = False) -> str:
    exe = Path(sys.executable).parent / "mutmut"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                                f"{os.environ.get('PATH', '')}")
    env.pop("PYTHONWARNINGS", None)  # the copied pytest configuration turns warnings to errors
    result = subprocess.run([str(exe), *args], cwd=workdir, env=env, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode and args[0] != "run":
        raise SystemExit(f"mutmut {' '.join(args)} failed ({result.returncode})")
    return result.stdout or ""


def module_of(name: str) -> str:
    """``hw.arith.xǁRequantizerǁelaborate__mutmut_3`` -> ``hw/arith.py``."""
    return re.split(r"\.x[_ǁ]", name, maxsplit=1)[0].replace(".", "/") + ".py"


def function_of(name: str) -> str:
    """``hw.arith.xǁRequantizerǁelaborate__mutmut_3`` -> ``hw/arith.py:Requantizer.elaborate``."""
    tail = re.split(r"\.x[_ǁ]", name, maxsplit=1)[1]
    return module_of(name) + ":" + tail.rsplit("__mutmut_", 1)[0].replace("ǁ", ".").strip(".")


def equivalents() -> dict[tuple[str, str, str], str]:
    table = {}
    for line in EQUIVALENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            function, reason, old, new = line.split("\t")
            if reason not in REASONS:
                raise SystemExit(f"{EQUIVALENTS.name}: unknown reason {reason!r}")
            table[(function, old, new)] = reason
    return table


def diff_of(workdir: Path, name: str) -> tuple[str, str]:
    text = mutmut(workdir, "show", name, capture=True)
    old = [line[1:].strip() for line in text.splitlines()
           if line.startswith("-") and not line.startswith("---")]
    new = [line[1:].strip() for line in text.splitlines()
           if line.startswith("+") and not line.startswith("+++")]
    return " / ".join(old), " / ".join(new)


def report(workdir: Path) -> int:
    statuses = {}
    for line in mutmut(workdir, "results", "--all", "true", capture=True).splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and "__mutmut_" in name:
            statuses[name] = status
    if not statuses:
        print("no mutants found: did mutmut run?")
        return 1
    per_module: dict[str, Counter] = {m: Counter() for m in MODULES}
    survivors = []
    for name, status in statuses.items():
        counts = per_module[module_of(name)]
        counts["total"] += 1
        if status in ("killed", "timeout", "segfault"):  # the tests noticed
            counts["killed"] += 1
        else:
            survivors.append((name, status))
    print(f"\n{'module':22} {'mutants':>8} {'killed':>8} {'score':>7}")
    total = Counter()
    for module, counts in per_module.items():
        total.update(counts)
        score = counts["killed"] / counts["total"] if counts["total"] else 1.0
        print(f"{module:22} {counts['total']:8d} {counts['killed']:8d} {score:7.1%}")
    print(f"{'all':22} {total['total']:8d} {total['killed']:8d} "
          f"{total['killed'] / total['total']:7.1%}")
    known = equivalents()
    unexplained, reasons = 0, Counter()
    if survivors:
        print(f"\n{len(survivors)} surviving mutants:")
    for name, status in sorted(survivors):
        old, new = diff_of(workdir, name)
        reason = known.get((function_of(name), old, new))
        unexplained += reason is None
        reasons[reason] += reason is not None
        print(f"\n{name} ({status}){'' if reason else '  <- NOT KNOWN TO BE EQUIVALENT'}")
        print(f"    - {old}\n    + {new}")
        if reason:
            print(f"    equivalent ({reason}): {REASONS[reason]}")
    print("\nequivalent survivors by reason: "
          + ", ".join(f"{r} {n}" for r, n in reasons.most_common() if n))
    print(f"{unexplained} survivor(s) not known to be equivalent")
    return 1 if unexplained else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/squeezefpga-mutate"),
                    help="where the copy of the tree and mutmut's mutants/ go")
    ap.add_argument("--max-children", type=int, default=2, help="mutants tested at once")
    ap.add_argument("--report-only", action="store_true",
                    help="print the report of the last run in --workdir")
    args = ap.parse_args(argv)
    workdir = args.workdir.resolve()
    if ROOT == workdir or ROOT in workdir.parents:
        ap.error("--workdir must be outside the project tree")
    if not args.report_only:
        prepare(workdir)
        mutmut(workdir, "run", "--max-children", str(args.max_children))
    return report(workdir)


if __name__ == "__main__":
    sys.exit(main())
