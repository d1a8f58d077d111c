"""Draw how a run behaved as its context grew: one figure, one line per run."""
from __future__ import annotations

import os

from .records import TIERS

TIER_COLOURS = ("#e8f1fa", "#eaf6ea", "#fdf3e1", "#f6e8f3", "#eeeeee", "#fbe9e7")
PANELS = (("ttft_s", "time to first token (s)"),
          ("prefill_tps", "prefill (uncached tok/s)"),
          ("decode_tps", "decode (tok/s)"),
          ("reasoning_tokens", "reasoning tokens"))


def plot(reports: list[dict], path: str) -> None:
    """Write a PNG or SVG (by the file's extension) of one or more runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise ValueError(f"{path}: the plot must be a .png or .svg file")
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    for ax, (key, label) in zip(axes.flat, PANELS):
        if len(reports) == 1:
            _tier_bands(ax, reports[0]["turns"])
        for rep in reports:
            _line(ax, rep, key, several=len(reports) > 1)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0, top=None if ax.get_ylim()[1] > 0.06 else 1)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("context tokens (prompt + completion)")
    if len(reports) > 1 or any(r["ceiling"] for r in reports):
        axes.flat[0].legend(loc="lower right", fontsize="small")
    fig.suptitle(_title(reports))
    fig.tight_layout()
    fig.savefig(path, dpi=110 if ext == ".png" else None)
    plt.close(fig)


def _points(rows, key):
    pts = [(r["context_tokens"], r[key]) for r in rows
           if r["status"] == "ok" and r.get("context_tokens") is not None and r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _line(ax, rep, key, several: bool) -> None:
    run = rep["run"] or {}
    xs, ys = _points(rep["turns"], key)
    name = f"{run.get('model', '?')} ({run.get('run_id', '?')})" if several else "turns"
    line, = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name)
    c = rep["ceiling"]
    if c and c.get("context_tokens"):
        ax.axvline(c["context_tokens"], color=line.get_color() if several else "#c62828",
                   linestyle="--", linewidth=1,
                   label=f"ceiling: {c['reason']} at turn {c['turn']}")


def _tier_bands(ax, rows) -> None:
    """Shade each tier from where the previous one ended to its own last turn."""
    ends: dict[str, float] = {}
    for r in rows:
        if r.get("context_tokens") is not None and r.get("tier") in TIERS:
            ends[r["tier"]] = max(ends.get(r["tier"], 0), r["context_tokens"])
    lo = min((r["context_tokens"] for r in rows if r.get("context_tokens") is not None), default=0)
    for tier, hi in ends.items():
        ax.axvspan(lo, max(hi, lo + 1), color=TIER_COLOURS[TIERS.index(tier)], alpha=0.9, zorder=0)
        ax.text(lo, 0.99, " " + tier, transform=ax.get_xaxis_transform(), fontsize="x-small",
                va="top", ha="left", color="#555555")
        lo = hi


def _title(reports) -> str:
    if len(reports) > 1:
        return "lalmpipe: " + " vs ".join(str((r["run"] or {}).get("model", "?")) for r in reports)
    run = reports[0]["run"] or {}
    server = (run.get("server") or {}).get("software") or "server"
    return f"lalmpipe: {run.get('model', '?')} on {server} at {run.get('base_url', '?')}"
