"""bench_quality's verdicts, table and chart (no model code: results are plain dicts).

A result dict has: id, method ("edgeslim", "llama.cpp", "llama.cpp+imatrix", "mlx-lm", "F16"),
config, series, status ("ok" | "unavailable" | "error"), file_bytes, bpw (8 x tensor bytes /
parameters), kl_mean, kl_p99, top1_same, ppl, dppl, convert_s, scorer; edgeslim results also
target_bpw or target_bytes (the size of the llama.cpp file it was made to match).

The goals (issue 10), in mean KL(F16 || quantized), llama.cpp's own quantization metric:
  GOAL1 at every edgeslim size from 2.5 to 5.0 bpw: KL <= 0.7 x the best llama.cpp file of
        equal or larger size. "Best of equal or larger size" at B bytes is the lowest KL among
        llama.cpp files no larger than B', the smallest llama.cpp file of at least B bytes
        (+0.5%: the same type with and without an imatrix differs by ~300 bytes), a step up
        the lower envelope, never an interpolation between files.
  GOAL2 an edgeslim file of 3.0 bpw: KL <= llama.cpp's best file of at most 4.0 bpw.
Both compare with llama.cpp with and without an imatrix (every type it has); mlx-lm is
shown beside them but not part of the goals.
"""
from __future__ import annotations

LCP = ("llama.cpp", "llama.cpp+imatrix")
GOAL1_RATIO, GOAL1_RANGE, GOAL2_AT, GOAL2_VS = 0.7, (2.5, 5.0), 3.0, 4.0
ORDER = {"F16": 0, "edgeslim": 1, "llama.cpp": 2, "llama.cpp+imatrix": 3, "mlx-lm": 4}


def ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("status") == "ok"]


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower envelope of (size, kl): each kept point beats every point at a smaller size."""
    out: list[tuple[float, float]] = []
    for x, y in sorted(points):
        if not out or y < out[-1][1]:
            out.append((x, y))
    return out


SAME_SIZE = 0.005  # files within 0.5% of each other count as one size (an imatrix adds ~300 bytes of metadata)


def best_at_or_above(env: list[tuple[float, float]], x: float, sizes=None) -> tuple[float, float] | None:
    """(size, kl) of the best file no larger than the smallest file of size >= x among `sizes` (default:
    the envelope's), or within SAME_SIZE of it; None past the largest."""
    first = min((s for s in (sizes if sizes is not None else [px for px, _ in env]) if s >= x), default=None)
    if first is None:
        return None
    return [(px, py) for px, py in env if px <= first * (1 + SAME_SIZE)][-1]


def best_at_most(env: list[tuple[float, float]], x: float) -> tuple[float, float] | None:
    """(size, kl) of the best file of size <= x; None when every file is larger."""
    below = [(px, py) for px, py in env if px <= x]
    return below[-1] if below else None


def lcp_envelope(results: list[dict], key: str = "file_bytes", metric: str = "kl_mean"):
    return envelope([(r[key], r[metric]) for r in ok(results) if r["method"] in LCP])


def _lcp_name(results: list[dict], size: float, key: str, kl: float | None = None) -> str:
    r = next((r for r in ok(results) if r["method"] in LCP and r[key] == size and kl in (None, r["kl_mean"])), None)
    return f"{r['method']} {r['config']}" if r else "?"


def goal1(results: list[dict], series: str) -> tuple[str, list[dict]]:
    """GOAL1 for one edgeslim series: the verdict line and one row per point in range."""
    env = lcp_envelope(results)
    sizes = [r["file_bytes"] for r in ok(results) if r["method"] in LCP]
    lo, hi = GOAL1_RANGE
    pts = sorted((r for r in ok(results) if r.get("series") == series and lo - 0.05 <= r["bpw"] <= hi + 0.05),
                 key=lambda r: r["file_bytes"])
    rows, fails = [], 0
    for r in pts:
        peer = best_at_or_above(env, r["file_bytes"], sizes)
        if peer is None:
            rows.append({"id": r["id"], "bpw": r["bpw"], "bytes": r["file_bytes"], "kl": r["kl_mean"], "peer": None})
            continue
        ratio = r["kl_mean"] / peer[1] if peer[1] > 0 else float("inf")
        fails += ratio > GOAL1_RATIO
        rows.append({"id": r["id"], "bpw": r["bpw"], "bytes": r["file_bytes"], "kl": r["kl_mean"],
                     "peer": _lcp_name(results, peer[0], "file_bytes", peer[1]), "peer_bytes": peer[0], "peer_kl": peer[1],
                     "ratio": ratio})
    tested = [x for x in rows if x["peer"] is not None]
    verdict = "UNTESTED" if not tested else ("MET" if not fails else f"NOT MET at {fails} of {len(tested)} sizes")
    worst = max((x["ratio"] for x in tested), default=float("nan"))
    return (f"GOAL1 [{series}] KL <= {GOAL1_RATIO}x the best llama.cpp file of equal or larger size, "
            f"{lo}-{hi} bpw: {verdict} (worst {worst:.2f}x over {len(tested)} sizes)"), rows


def goal2(results: list[dict], series: str) -> str:
    mine = [r for r in ok(results) if r.get("series") == series and abs(r["bpw"] - GOAL2_AT) <= 0.06]
    peer = best_at_most(lcp_envelope(results, "bpw"), GOAL2_VS)
    head = f"GOAL2 [{series}] {GOAL2_AT} bpw KL <= llama.cpp's best at <= {GOAL2_VS} bpw"
    if not mine or peer is None:
        return f"{head}: UNTESTED (no edgeslim file at {GOAL2_AT} bpw or no llama.cpp file at <= {GOAL2_VS} bpw)"
    r = min(mine, key=lambda r: abs(r["bpw"] - GOAL2_AT))
    verdict = "MET" if r["kl_mean"] <= peer[1] else "NOT MET"
    return (f"{head}: {verdict} (edgeslim {r['bpw']:.2f} bpw KL {r['kl_mean']:.4g}; "
            f"{_lcp_name(results, peer[0], 'bpw', peer[1])} {peer[0]:.2f} bpw KL {peer[1]:.4g}, "
            f"ratio {r['kl_mean'] / peer[1]:.2f}x)")


def edgeslim_series(results: list[dict]) -> list[str]:
    return sorted({r["series"] for r in ok(results) if r["method"] == "edgeslim"})


def goal_lines(results: list[dict]) -> tuple[list[str], dict[str, list[dict]]]:
    """Every GOAL line, and GOAL1's per-size rows per edgeslim series."""
    if not [r for r in ok(results) if r["method"] in LCP]:
        return ["GOAL: no llama.cpp results to compare with"], {}
    lines, rows = [], {}
    for s in edgeslim_series(results):
        line, rows[s] = goal1(results, s)
        lines += [line, goal2(results, s)]
    return lines, rows


def goal1_table(rows: list[dict]) -> list[str]:
    """Markdown rows: edgeslim file vs the llama.cpp file it is measured against."""
    out = ["| edgeslim file | bpw | bytes | KL | best llama.cpp of equal or larger size | its bytes | its KL | ratio |",
           "|---|---:|---:|---:|---|---:|---:|---:|"]
    for x in rows:
        if x["peer"] is None:
            out.append(f"| {x['id']} | {x['bpw']:.3f} | {x['bytes']:,} | {x['kl']:.5f} | (none this large) | | | |")
        else:
            mark = "**" if x["ratio"] > GOAL1_RATIO else ""
            out.append(f"| {x['id']} | {x['bpw']:.3f} | {x['bytes']:,} | {x['kl']:.5f} | {x['peer']} | "
                       f"{x['peer_bytes']:,} | {x['peer_kl']:.5f} | {mark}{x['ratio']:.2f}x{mark} |")
    return out


def results_table(f16: dict, results: list[dict]) -> list[str]:
    rows = sorted(ok(results), key=lambda r: (ORDER.get(r["method"], 9), r.get("series", ""), r["file_bytes"]))
    out = ["| method | configuration | file bytes | bpw | KL mean | KL p99 | top-1 same | PPL | ΔPPL | make s | scored by |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in [f16, *rows]:
        out.append(f"| {r['method']} | {r['config']} | {r['file_bytes']:,} | {r['bpw']:.3f} | {r['kl_mean']:.5f} | "
                   f"{_num(r.get('kl_p99'), '.4f')} | {100 * r.get('top1_same', 1):.2f}% | {r['ppl']:.4f} | "
                   f"{r['dppl']:+.4f} | {r.get('convert_s', '')} | {r.get('scorer', '')} |")
    return out


def _num(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def chart(name: str, results: list[dict], png) -> bool:
    """KL against file size, one line per series (log scale); False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    pts_all = [r for r in ok(results) if r["method"] != "F16" and r["kl_mean"] > 0]
    fig, ax = plt.subplots(figsize=(10, 6))
    styles = {"edgeslim": "-o", "llama.cpp": ":s", "llama.cpp+imatrix": "--D", "mlx-lm": "-.^"}
    for s in sorted({r["series"] for r in pts_all}, key=lambda s: (ORDER.get(s.split(" ")[0], 1), s)):
        pts = sorted((r for r in pts_all if r["series"] == s), key=lambda r: r["file_bytes"])
        method = pts[0]["method"]
        xs, ys = [r["file_bytes"] / 1e6 for r in pts], [r["kl_mean"] for r in pts]
        if method in LCP:  # llama.cpp's types are separate files: show them as points plus their envelope
            env = envelope(list(zip(xs, ys)))
            ax.plot(xs, ys, styles[method][-1], ms=4, alpha=0.5)
            ax.plot([x for x, _ in env], [y for _, y in env], styles[method], ms=4, label=f"{s} (envelope)")
        else:
            ax.plot(xs, ys, styles.get(method, "-o"), ms=4, label=s, lw=2 if method == "edgeslim" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("mean KL(F16 ‖ quantized)")
    ax.set_title(f"{name}: KL divergence vs file size (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True
