"""The sweep's table (markdown + JSON), Pareto fronts and its one-sentence answer.

Pareto front (quality): no other point is both at most as large and at most as divergent
(mean KL against F16), one strictly better. Pareto front (speed): no other point is both at
most as large and at least as fast. The answer compares sparse with dense points at equal
file size: each sparse point against the dense edgeslim points' KL interpolated (linearly in
log KL) at its size.
"""
from __future__ import annotations

import math

MAIN_ROWS = ("next-frequent", "next-rare", "copy", "recall", "cloze")  # not the /first, /choice reference rows


def ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r.get("status") == "ok"]


def pareto(points: list[dict], y: str, lower_is_better: bool = True) -> list[dict]:
    """Points on the (file_bytes, y) Pareto front, by size."""
    sign = 1 if lower_is_better else -1
    front, best = [], math.inf
    for r in sorted(points, key=lambda r: (r["file_bytes"], sign * r[y])):
        if sign * r[y] < best:
            front.append(r)
            best = sign * r[y]
    return front


def task_mean(r: dict) -> float | None:
    """Mean accuracy over the main task rows the point has (None without tasks)."""
    vals = [r["tasks"][k]["accuracy"] for k in MAIN_ROWS if k in r.get("tasks", {})]
    return sum(vals) / len(vals) if vals else None


def interpolate_log(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x from (x, y>0) points, linear in log y between neighbours; None outside their range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1 and y0 > 0 and y1 > 0:
            t = (x - x0) / (x1 - x0) if x1 > x0 else 0.0
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return None


def answer(results: list[dict]) -> str:
    """One sentence, with numbers: does sparse + more bits beat dense + fewer bits at equal size?"""
    good = [r for r in ok(results) if r["method"] == "edgeslim"]
    dense = [(r["file_bytes"], r["kl_mean"]) for r in good if not r.get("sparsity")]
    sparse = [r for r in good if r.get("sparsity")]
    if not sparse:
        front = [r for r in pareto(ok(results), "kl_mean") if r["method"] != "F16"]
        best = ", ".join(f"{r['label']} ({r['file_bytes'] / 1e6:.2f} MB, KL {r['kl_mean']:.4f})" for r in front[:4])
        return ("No sparse point was measured (no --sparsity above 0), so this sweep answers only dense bits vs "
                f"size; its KL Pareto front, smallest first: {best}.")
    wins, tested, parts = 0, 0, []
    for r in sorted(sparse, key=lambda r: r["file_bytes"]):
        d = interpolate_log(dense, r["file_bytes"])
        if d is not None:
            tested, wins = tested + 1, wins + (r["kl_mean"] < d)
            parts.append(f"{r['label']} at {r['file_bytes'] / 1e6:.2f} MB: KL {r['kl_mean']:.4f} vs dense {d:.4f}")
            continue
        better = [(b, k) for b, k in dense if b <= r["file_bytes"] and k <= r["kl_mean"]]
        if better:  # larger and worse than a dense file: a loss without interpolating
            tested += 1
            b, k = min(better, key=lambda bk: bk[1])
            parts.append(f"{r['label']} at {r['file_bytes'] / 1e6:.2f} MB: KL {r['kl_mean']:.4f}, worse than a "
                         f"smaller dense file ({b / 1e6:.2f} MB, KL {k:.4f})")
        else:
            parts.append(f"{r['label']} at {r['file_bytes'] / 1e6:.2f} MB: no dense file of equal or smaller size")
    if not tested:
        return ("No sparse point can be compared with a dense one at equal size here (each is smaller than every "
                "dense file; add lower --bits): " + "; ".join(parts) + ".")
    verdict = "beats" if wins == tested else "does not beat" if wins == 0 else "sometimes beats"
    return (f"Sparse + more bits {verdict} dense + fewer bits at equal file size ({wins} of {tested} compared: "
            + "; ".join(parts) + ")" + _speed_clause(sparse, [r for r in good if not r.get("sparsity")]) + ".")


def _speed_clause(sparse: list[dict], dense: list[dict]) -> str:
    """", and the sparse files decode at A-B x the tokens/s of the dense file nearest in size" (empty
    without speeds)."""
    timed = [d for d in dense if d.get("decode_tps") and d["file_bytes"] > 0]
    ratios = []
    for r in sparse:
        if r.get("decode_tps") and timed and r["file_bytes"] > 0:
            d = min(timed, key=lambda d: abs(math.log(d["file_bytes"] / r["file_bytes"])))
            ratios.append(r["decode_tps"] / d["decode_tps"])
    if not ratios:
        return ""
    span = f"{min(ratios):.2f}x" if len(ratios) == 1 else f"{min(ratios):.2f}-{max(ratios):.2f}x"
    return f", and the sparse files decode at {span} the tokens/s of the dense file nearest in size"


def _fmt_task(t: dict | None) -> str:
    if not t:
        return ""
    return f"{100 * t['accuracy']:.1f} [{100 * t['lo']:.0f}-{100 * t['hi']:.0f}]"


def delta_table(results: list[dict], rows: list[str]) -> list[str]:
    """Markdown lines: each file's task accuracy minus F16's on the same probes, in points, with the
    paired 95% interval (only probes whose outcome changed move it)."""
    from ..runtime.tasks import paired_difference

    good = ok(results)
    f16 = next((r for r in good if r["method"] == "F16"), None)
    rows = [k for k in rows if f16 is not None and f16.get("tasks", {}).get(k, {}).get("outcomes")]
    if not rows:
        return []
    out = ["| method | configuration | file MB | " + " | ".join(f"Δ {k}" for k in rows) + " |",
           "|---|---|---:|" + "---:|" * len(rows)]
    for r in sorted((r for r in good if r["method"] != "F16"), key=lambda r: (r["method"], -r["file_bytes"])):
        cells = []
        for k in rows:
            a, b = f16["tasks"][k]["outcomes"], r.get("tasks", {}).get(k, {}).get("outcomes", "")
            d, lo, hi = paired_difference(a, b) if b else (math.nan, math.nan, math.nan)
            cells.append(f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" if b else "")
        out.append(f"| {r['method']} | {r['label']} | {r['file_bytes'] / 1e6:.3f} | " + " | ".join(cells) + " |")
    return out


def markdown(results: list[dict], meta: dict, pngs: list[str]) -> str:
    """The report page: setup, table (every point), notes on unmeasured points, the answer, the charts."""
    good = sorted(ok(results), key=lambda r: (r["method"] != "F16", r["method"] != "edgeslim", r["file_bytes"]))
    front_q = {r["key"] for r in pareto(good, "kl_mean")}
    front_s = {r["key"] for r in pareto(good, "decode_tps", lower_is_better=False)}
    rows = [k for k in meta.get("task_rows", [])]
    head = ["method", "configuration", "file MB", "bpw", "PPL", "ΔPPL", "KL", "top-1", *rows, "decode tok/s",
            "peak RSS MB", "front"]
    lines = [f"# edgeslim sweep: {meta['model']}", "", f"Made by `{meta['command']}` on {meta['date']} "
             f"({meta['machine']}).", "", *[f"- {s}" for s in meta["setup_lines"]], "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 3) + "---|"]
    for r in good:
        front = ("Q" if r["key"] in front_q else "") + ("S" if r["key"] in front_s else "")
        tasks = [_fmt_task(r.get("tasks", {}).get(k)) for k in rows]
        lines.append(f"| {r['method']} | {r['label']} | {r['file_bytes'] / 1e6:.3f} | {r['bpw']:.2f} | "
                     f"{r['ppl']:.4f} | {r['dppl']:+.4f} | {r['kl_mean']:.5f} | {100 * r['top1_same']:.1f}% | "
                     + "".join(f"{t} | " for t in tasks)
                     + f"{r['decode_tps']:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} | {front} |")
    lines += ["", "Task cells: accuracy % [95% Wilson interval]. front: Q on the size/KL Pareto front, S on the "
              "size/decode-speed front.", ""]
    deltas = delta_table(results, rows)
    if deltas:
        lines += ["Task accuracy minus F16's on the same probes, in points [paired 95% interval]:", "", *deltas, ""]
    other = [r for r in results if r.get("status") != "ok"]
    if other:
        lines += ["Not measured:", ""] + [f"- {r['label']}: {r['status']}: {r.get('note', '')}" for r in other]
        lines.append("")
    if meta.get("notes"):
        lines += [f"- {n}" for n in meta["notes"]] + [""]
    lines += ["**Answer:** " + answer(results), ""] + [f"![{p}]({p})" for p in pngs] + [""]
    return "\n".join(lines)
