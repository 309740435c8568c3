"""Concurrent builds of one simulation model (``pytest -n 2`` workers, or two people in one
tree): one caller builds while the other waits and then uses that build; a build killed
half-way leaves nothing that looks built."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sim.verilator import ROOT, build

COUNTER = """module counter(input clk, input rst, output reg [7:0] q);
  always @(posedge clk) q <= rst ? 8'd0 : q + 8'd1;
endmodule
"""

MAIN = """#include "Vcounter.h"
#include "verilated.h"
#include <cstdio>
int main(int argc, char** argv) {
  Verilated::commandArgs(argc, argv);
  Vcounter* top = new Vcounter;
  top->rst = 1; top->clk = 0; top->eval(); top->clk = 1; top->eval(); top->rst = 0;
  for (int i = 0; i < 10; i++) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
  std::printf("%d\\n", top->q);
  delete top;
  return 0;
}
"""

# One build in a process of its own, started when the file ``go`` appears (so that several
# start together); prints the executable it got and that file's inode.
BUILDER = """
import json, sys, time
from pathlib import Path
from sim.verilator import build
root, go, main = (Path(a) for a in sys.argv[1:4])
while not go.exists():
    time.sleep(0.005)
exe = build("counter", Path(root / "counter.v.txt").read_text(), [main], "counter", root=root)
print(json.dumps({"exe": str(exe), "ino": exe.stat().st_ino}))
"""

# The same for a cocotb build (the DSP testbench's small design) through sim.cocotb_runner.
COCOTB_BUILDER = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(sys.argv[3])))
from test_dsp import products_verilog
from sim.cocotb_runner import STAMP, run_cocotb
root, go = Path(sys.argv[1]), Path(sys.argv[2])
verilog = products_verilog()
from sim.tb_dsp import mult18x18d_model
while not go.exists():
    time.sleep(0.005)
out = run_cocotb(name="dsp_lock", verilog=verilog + "\\n" + mult18x18d_model() + "\\n",
                 toplevel="products", test_module="sim.tb_dsp", sim="verilator", root=root)
print(json.dumps({"dir": str(out), "ino": (out / STAMP).stat().st_ino}))
"""


def sources(tmp: Path) -> Path:
    (tmp / "counter.v.txt").write_text(COUNTER)
    main = tmp / "main.cpp"
    main.write_text(MAIN)
    return main


def start(script: str, *args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 900) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_two_concurrent_verilator_builds_share_one(tmp_path):
    main = sources(tmp_path)
    go = tmp_path / "go"
    procs = [start(BUILDER, tmp_path, go, main) for _ in range(2)]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    results = [finish(p) for p in procs]
    exe = Path(results[0]["exe"])
    assert results[1]["exe"] == str(exe)
    # one build: both callers got the same file, which is still the one in place
    assert results[0]["ino"] == results[1]["ino"] == exe.stat().st_ino
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "10"
    built = [p.name for p in tmp_path.iterdir() if p.is_dir()]
    assert built == [exe.parent.name]  # no scratch directory left over
    # and a third caller finds it without building
    assert build("counter", COUNTER, [main], "counter", root=tmp_path) == exe
    assert exe.stat().st_ino == results[0]["ino"]


def test_a_killed_build_leaves_nothing_that_looks_built(tmp_path):
    main = sources(tmp_path)
    go = tmp_path / "go"
    go.touch()
    proc = start(BUILDER, tmp_path, go, main, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # wait for the build's directory (wherever it builds), then into the compile
        while not any(p.is_dir() and "counter_" in p.name for p in tmp_path.iterdir()):
            assert proc.poll() is None, "the build ended before it could be interrupted"
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.005)
        time.sleep(1.0)
        assert proc.poll() is None, "the build ended before it could be interrupted"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the builder, verilator, make and the compilers
        proc.communicate()
    assert not [p.name for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("counter_")]
    # the next build starts afresh, clears the killed one's scratch directory, and works
    exe = build("counter", COUNTER, [main], "counter", root=tmp_path)
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip() == "10"
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [exe.parent.name]


def test_two_concurrent_cocotb_runs_of_one_build_name(tmp_path):
    go = tmp_path / "go"
    procs = [start(COCOTB_BUILDER, tmp_path, go, Path(__file__).parent) for _ in range(2)]
    time.sleep(3.0)
    go.touch()
    results = [finish(p) for p in procs]
    build_dir = Path(results[0]["dir"])
    assert results[1]["dir"] == str(build_dir) and build_dir.parent == tmp_path
    # both ran their tests on one build, which is the one in place
    assert results[0]["ino"] == results[1]["ino"] == (build_dir / "built_from.sha256").stat(
    ).st_ino
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [build_dir.name]


def test_prune_keeps_the_recent_and_the_locked_builds(tmp_path):
    """A content-keyed cache does not grow with every change of the design: the builds of a
    name beyond the most recently used few, unused for long enough, go; a recent one, one in
    use (its lock held), another name's and the new one stay."""
    import fcntl

    from spec.cache import prune

    now = time.time()

    def made(name, age):
        d = tmp_path / name
        d.mkdir()
        (d / "model").write_text(name)
        os.utime(d, (now - age, now - age))
        return d

    new = made("board_tb_00000000000000ff", 0)
    old = [made(f"board_tb_{i:016x}", 7200 + i) for i in range(6)]
    recent = made("board_tb_00000000000000aa", 60)
    fresh = made("board_tb_00000000000000bb", 120)  # beyond `keep` but used 2 minutes ago
    other = made("engine_tb_0000000000000001", 99999)
    held = old[-1]
    with open(tmp_path / f"{held.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        removed = prune(new, keep=2, min_age=3600)
    # kept: the new one and the most recently used (recent); beyond them fresh (too recent to
    # go), old[0:5] and old[5] (held)
    assert sorted(removed) == sorted(old[:5])
    assert all(not d.exists() for d in old[:5])
    assert all(d.exists() for d in (new, recent, fresh, held, other))
