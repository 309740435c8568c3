"""sw.dse: the design space's networks and figures, the cost model against the RTL on sampled
points, and the command on a real Dask cluster (a scheduler and two workers on localhost, each
its own process), whose rerun skips what the store holds."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spec.cost import fire_cost
from sw.dse import hardware
from sw.dse.study import (
    PAPER_PCT3X3,
    PAPER_SR,
    SHIPPED_POINT,
    NetPoint,
    Store,
    device_figures,
    fire_shapes,
    grid,
    model_bytes,
    network_figures,
    pareto,
)
from sw.network import ARCHS
from sw.train import model_bytes as train_model_bytes

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_the_default_point_is_the_shipped_network():
    """The study's default point is mnist_fire, layer for layer: the shipped model is a point
    of the space, and its figures are the same network's."""
    assert SHIPPED_POINT.network().layers == ARCHS["mnist_fire"].layers


def test_points_follow_the_paper_rule():
    p = NetPoint(sr=0.5, pct3x3=0.25, base_e=32, incr_e=16, freq=1)
    # e_i = 32 + 16 i; e3 = round(0.25 e); s = round(0.5 e)
    assert p.fires == [(16, 24, 8), (24, 36, 12), (32, 48, 16), (40, 60, 20)]
    assert [f.bypass for f in p.network().fires] == [False] * 4  # no equal widths: no bypass
    pruned = NetPoint(sr=0.5, prune=0.5)
    assert pruned.fires == [(16, 16, 16), (16, 16, 16), (32, 32, 32), (32, 32, 32)]
    assert len(grid({"sr": PAPER_SR, "pct3x3": PAPER_PCT3X3})) == 25


def test_figures():
    p = NetPoint(sr=0.25, pct3x3=0.75, bits=4)
    net = p.network()
    fig = network_figures(p)
    assert fig["params"] == net.params
    assert fig["macs"] == sum(r["macs"] for r in net.shapes(28))
    assert model_bytes(net, 8) == train_model_bytes(net)["int8"]
    n_bias = sum(s[0] for k, s in net.param_shapes.items() if k.endswith(".bias"))
    assert fig["model_bytes"] == (net.params - n_bias + 1) // 2 + 4 * n_bias
    e = hardware.engine("arty_a7", hardware.default_params("arty_a7"))
    lat = hardware.latencies(e.params, e.multipliers)
    dev = device_figures(NetPoint(sr=0.25), e, lat)
    cycles = sum(fire_cost(e.params, s, bypass=b, latencies=lat).cycles
                 for s, b in fire_shapes(NetPoint(sr=0.25).network()))
    assert dev["fire_cycles"] == cycles and dev["fps"] == e.clock_hz / cycles
    # 128 squeeze channels do not fit the board's engine (max_squeeze 64): said, not costed
    big = device_figures(NetPoint(sr=1.0), e, lat)
    assert big["fire_cycles"] is None and "max_squeeze" in big["device_error"]


def test_pareto():
    rows = [{"int_accuracy": 0.9, "fps": 100, "model_bytes": 10},
            {"int_accuracy": 0.8, "fps": 100, "model_bytes": 10},  # beaten by the first
            {"int_accuracy": 0.7, "fps": 300, "model_bytes": 10},
            {"int_accuracy": 0.95, "fps": 50, "model_bytes": 40}]
    assert pareto(rows) == [rows[0], rows[2], rows[3]]


def test_cost_model_agrees_with_the_rtl_on_sampled_points():
    """Three points drawn from the paper's grid (those the board's engine takes), every Fire
    layer on the engine's RTL in Verilator: the cost model within 2% of its cycle count, and
    the RTL's output the golden model's."""
    e = hardware.engine("arty_a7", hardware.default_params("arty_a7"))
    lat = hardware.latencies(e.params, e.multipliers)
    fits = [p for p in grid({"sr": PAPER_SR, "pct3x3": PAPER_PCT3X3})
            if device_figures(p, e, lat)["fire_cycles"] is not None]
    rng = np.random.default_rng(16)
    sample = [fits[i] for i in rng.choice(len(fits), 3, replace=False)]
    for p in sample:
        layers = [[s.h, s.w, s.cin, s.s, s.e1, s.e3, b] for s, b in fire_shapes(p.network())]
        result = hardware.rtl_cycles(e.params.to_dict(), e.multipliers, layers)
        assert len(result["layers"]) == 4
        for row in result["layers"]:
            assert row["match"], (p.name, row)
            assert abs(row["error"]) <= 0.02, (p.name, row)


def test_store_round_trip(tmp_path):
    store = Store(tmp_path)
    key = {"point": NetPoint().to_dict(), "seed": 1}
    assert store.get("train", key) is None
    store.put("train", key, {"float_accuracy": 0.5})
    assert store.get("train", key) == {"float_accuracy": 0.5}
    assert store.get("train", {**key, "seed": 2}) is None
    assert [p.suffix for p in (tmp_path / "train").iterdir()] == [".json"]


def dse(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sw.dse", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--sr", "0.1,x"], "'x' in --sr is not a number"),
    (["--board", "nope"], "unknown board 'nope'"),
    (["--bypass", "maybe"], "--bypass takes on, off or on,off"),
    (["--oc-lanes", "0", "--no-train"], "oc_lanes=0"),
    (["--pct3x3", "1.5", "--no-train"], "pct3x3=1.5"),
])
def test_bad_input_is_one_line(args, message, tmp_path):
    r = dse(*args, "--store", str(tmp_path), "--out", str(tmp_path), "--rtl-sample", "0",
            "--no-resources")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_help_names_every_option():
    r = dse("--help")
    assert r.returncode == 0
    for option in ("--study", "--scheduler", "--store", "--epochs", "--seeds", "--plots",
                   "--sr", "--pct3x3", "--prune", "--bits", "--oc-lanes", "--rtl-sample"):
        assert option in r.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``dask scheduler`` and two ``dask worker ADDRESS`` on localhost, each its own process
    (no nanny: the worker is the process we started, whose pid the tasks report)."""
    from distributed import Client

    tmp = tmp_path_factory.mktemp("dask")
    with socket.socket() as sock:  # a free port on the loopback
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard",
                               "--dashboard-address", "127.0.0.1:0"], cwd=tmp,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--name", f"w{i}", "--local-directory", str(tmp / f"w{i}")],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, {p.pid for p in procs[1:]}
    finally:
        # the workers first, each closing while the scheduler is still there to say goodbye
        # to (a worker whose scheduler went first waits to reconnect), then the scheduler
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


TINY = ["--study", "grid", "--sr", "0.125,0.25", "--dataset", "digits", "--seeds", "2",
        "--max-steps", "3", "--train-limit", "100", "--test-limit", "40", "--calib", "20",
        "--no-resources", "--json", "--quiet"]


def test_a_study_on_a_scheduler_and_two_workers(cluster, tmp_path):
    """Four trainings and one RTL check through --scheduler: every result in the table,
    computed on the workers we started, and the plots written."""
    address, worker_pids = cluster
    r = dse(*TINY, "--scheduler", address, "--rtl-sample", "1", "--store",
            str(tmp_path / "store"), "--out", str(tmp_path), "--plots", str(tmp_path))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["tasks_run"] == 5 and result["tasks_skipped"] == 0 and not result["failed"]
    assert [row["sr"] for row in result["rows"]] == [0.125, 0.25]
    for row in result["rows"]:
        assert row["seeds_done"] == 2
        assert 0 <= row["int_accuracy"] <= 1 and row["int_accuracy_spread"] >= 0
        assert row["fps"] > 0
    # every training ran in one of the workers we started (not in this process, nor a local
    # cluster of the command's own); which of the two takes which task is Dask's to decide
    pids = {json.loads(p.read_text())["result"]["worker_pid"]
            for p in (tmp_path / "store" / "train").iterdir()}
    assert pids and pids <= worker_pids
    (check,) = result["cost_check"]
    assert check["max_error"] <= 0.02 and all(x["match"] for x in check["layers"])
    table = json.loads((tmp_path / "table.json").read_text())
    assert table == result["rows"]
    assert (tmp_path / "table.csv").read_text().count("\n") == 3
    for name in ("figure3.png", "pareto.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_finished_points(cluster, tmp_path):
    address, _ = cluster
    args = [*TINY, "--scheduler", address, "--rtl-sample", "0", "--store",
            str(tmp_path / "store"), "--out", str(tmp_path)]
    first = json.loads(dse(*args).stdout)
    assert first["tasks_run"] == 4 and first["tasks_skipped"] == 0
    again = json.loads(dse(*args).stdout)
    assert again["tasks_run"] == 0 and again["tasks_skipped"] == 4
    assert again["rows"] == first["rows"]
    # --report-only runs nothing, whatever the store holds
    report = json.loads(dse(*args, "--report-only").stdout)
    assert report["rows"] == first["rows"] and report["tasks_missing"] == 0
    empty = json.loads(dse(*TINY, "--report-only", "--rtl-sample", "0", "--store",
                           str(tmp_path / "empty"), "--out", str(tmp_path / "empty")).stdout)
    assert empty["tasks_run"] == 0 and empty["tasks_missing"] == 4
    assert all(row["int_accuracy"] is None for row in empty["rows"])
    # one result lost: only that one runs again, and gives the same figures (seeded)
    victim = sorted((tmp_path / "store" / "train").iterdir())[0]
    before = json.loads(victim.read_text())["result"]
    victim.unlink()
    third = json.loads(dse(*args).stdout)
    assert third["tasks_run"] == 1 and third["tasks_skipped"] == 3
    after = json.loads(victim.read_text())["result"]
    assert after["float_accuracy"] == before["float_accuracy"]
    assert after["int_accuracy"] == before["int_accuracy"]
