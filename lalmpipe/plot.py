"""Draw how a run behaved as its context grew: one figure, one line per run."""
from __future__ import annotations

import os

from .records import TIERS

PLOT_FILES = (".png", ".svg")   # matplotlib writes the format the file's name ends in
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
    if ext not in PLOT_FILES:
        raise ValueError(f"{path}: the plot must be a {' or '.join(PLOT_FILES)} file")
    with_memory = any(r.get("memory") for r in reports)
    fig, axes = plt.subplots(3 if with_memory else 2, 2, figsize=(12, 11 if with_memory else 8),
                             sharex=True)
    for ax, (key, label) in zip(axes.flat, PANELS):
        if len(reports) == 1:
            _tier_bands(ax, reports[0]["turns"])
        for rep in reports:
            _line(ax, rep, key, several=len(reports) > 1)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0, top=None if ax.get_ylim()[1] > 0.06 else 1)
        ax.grid(True, alpha=0.3)
    if with_memory:
        _memory(axes[2], reports)
    for ax in axes[-1]:
        ax.set_xlabel("context tokens (prompt + completion)")
    if len(reports) > 1 or any(r["ceiling"] for r in reports):
        axes.flat[0].legend(loc="lower right", fontsize="small")
    fig.suptitle(_title(reports))
    fig.tight_layout()
    fig.savefig(path, dpi=110 if ext == ".png" else None)
    plt.close(fig)


def _memory(axes, reports) -> None:
    """Recall of planted facts per probe round, and the standing rule per turn."""
    recall_ax, rule_ax = axes
    for rep in reports:
        m = rep.get("memory") or {}
        name = str((rep["run"] or {}).get("model", "?"))
        rounds = [r for r in m.get("rounds") or [] if r["context_tokens"] is not None]
        recall_ax.plot([r["context_tokens"] for r in rounds], [r["recall"] for r in rounds],
                       marker="s", markersize=4, linewidth=1.2, label=name)
        if m.get("effective_context_tokens"):
            recall_ax.axvline(m["effective_context_tokens"], color="#2e7d32", linestyle=":",
                              label=f"effective context ({name})")
        xs, ys = _points(rep["turns"], "rule_kept")
        rule_ax.step(xs, [1 if y else 0 for y in ys], where="post", label=f"rule kept ({name})")
        xs, ys = _points(rep["turns"], "repeat_3gram_ratio")
        rule_ax.plot(xs, ys, linestyle="--", linewidth=1, label=f"repeated 3-grams ({name})")
    recall_ax.set_ylabel("recall of planted facts")
    rule_ax.set_ylabel("rule kept (1/0), repeat ratio")
    for ax in axes:
        ax.set_ylim(-0.05, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize="x-small")


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
