"""The sweep's PNG charts (matplotlib, Agg): quality vs file size and speed vs file size, Pareto fronts marked.

quality.png: mean KL(F16 || file) (log scale) and mean task accuracy against file size;
speed.png: decode tokens/s and peak RSS against file size. One line per series (an
allocation at one sparsity and pattern, bits varying; each peer), the Pareto front as a
grey step line with its points ringed.
"""
from __future__ import annotations

from pathlib import Path

from .report import ok, pareto, task_mean

MARKERS = {"edgeslim": "o", "llama.cpp": "s", "mlx-lm": "^", "F16": "*"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(points: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(points, key=lambda r: r["file_bytes"]):
        out.setdefault(f"{r['method']}: {r['series']}" if r["method"] == "edgeslim" else r["method"], []).append(r)
    return out


def _short(r: dict) -> str:
    """A point's name on the chart: its type or budget (edgeslim), its configuration (peers)."""
    if r["method"] == "edgeslim":
        return r["label"].replace("_G32", "").replace("_G64", "")
    return r.get("config", r["label"])


def _plot(ax, points: list[dict], y, front: list[dict], colors) -> None:
    """Series lines of y(r) against MB, and the front (step line, ringed points)."""
    for i, (name, pts) in enumerate(_series(points).items()):
        vals = [(r["file_bytes"] / 1e6, y(r)) for r in pts if y(r) is not None]
        if not vals:
            continue
        xs, ys = zip(*vals)
        style = "-" if pts[0]["method"] == "edgeslim" else "--"
        color = colors[i % len(colors)]
        ax.plot(xs, ys, style, marker=MARKERS.get(pts[0]["method"], "o"), ms=5, color=color, label=name)
        for r in pts:
            if y(r) is not None:
                ax.annotate(_short(r), (r["file_bytes"] / 1e6, y(r)), xytext=(4, 3), textcoords="offset points",
                            fontsize=6, color=color)
    fx = [r["file_bytes"] / 1e6 for r in front if y(r) is not None]
    fy = [y(r) for r in front if y(r) is not None]
    if fx:
        ax.step(fx, fy, where="post", color="0.55", lw=1, zorder=0, label="Pareto front")
        ax.scatter(fx, fy, s=110, facecolors="none", edgecolors="0.3", lw=1, zorder=3)
    ax.set_xlabel("file size (MB)")
    ax.grid(True, which="both", alpha=0.3)


def quality_png(results: list[dict], path: Path, title: str) -> Path:
    """KL and task accuracy against file size."""
    plt = _plt()
    good = ok(results)
    f16 = next((r for r in good if r["method"] == "F16"), None)
    rest = [r for r in good if r["method"] != "F16"]
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    kl_pts = [r for r in rest if r["kl_mean"] > 0]
    _plot(axes[0], kl_pts, lambda r: r["kl_mean"], pareto(kl_pts, "kl_mean"), colors)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean KL(F16 ‖ file), nats/token (lower is better)")
    task_pts = [r for r in good if task_mean(r) is not None]
    if task_pts:
        front = pareto([{**r, "_acc": task_mean(r)} for r in task_pts], "_acc", lower_is_better=False)
        _plot(axes[1], [r for r in task_pts if r["method"] != "F16"], task_mean, front, colors)
        if f16 is not None and task_mean(f16) is not None:
            axes[1].axhline(task_mean(f16), color="k", ls=":", lw=1, label=f"F16 ({f16['file_bytes'] / 1e6:.2f} MB)")
    axes[1].set_ylabel("mean task accuracy (higher is better)")
    for ax, sub in zip(axes, ("divergence from F16", "task accuracy")):
        ax.set_title(f"{title}: {sub}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def speed_png(results: list[dict], path: Path, title: str) -> Path:
    """Decode speed and peak RSS against file size."""
    plt = _plt()
    good = ok(results)
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    _plot(axes[0], good, lambda r: r["decode_tps"], pareto(good, "decode_tps", lower_is_better=False), colors)
    axes[0].set_ylabel("decode tokens/s (higher is better)")
    _plot(axes[1], good, lambda r: r["peak_rss_bytes"] / 2**20, [], colors)
    axes[1].set_ylabel("peak RSS of the decode run (MiB)")
    for ax, sub in zip(axes, ("decode speed", "peak memory")):
        ax.set_title(f"{title}: {sub}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
