"""Draw how a run behaved as its context grew: one figure, one line per run."""
from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

from ..aggregate import DEPTH_EDGES
from ..records import TIERS, Metrics
from ..vocab import Status
from ..results import RunReport, Share
from .columns import axis

if TYPE_CHECKING:   # matplotlib is imported only to draw (the plot extra)
    from matplotlib.typing import RcKeyType

PLOT_FILES = (".png", ".svg")   # matplotlib writes the format the file's name ends in
TIER_COLOURS = ("#e8f1fa", "#eaf6ea", "#fdf3e1", "#f6e8f3", "#eeeeee", "#fbe9e7")
PANELS = ("ttft_s", "prefill_tps", "decode_tps", "reasoning_tokens")
FEW = 3   # a heatmap cell of fewer probes is marked as not known


# names and labels come from the records: drawn as written, never read as mathtext; an
# SVG's ids are the same for the same figure, and its glyphs are paths, not <text>
RC: dict[RcKeyType, Any] = {"text.parse_math": False, "svg.hashsalt": "lalmpipe", "svg.fonttype": "path"}


def plot(reports: list[RunReport], path: str) -> None:
    """Write a PNG or SVG (by the file's extension) of one or more runs."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in PLOT_FILES:
        raise ValueError(f"{path}: the plot must be a {' or '.join(PLOT_FILES)} file")
    _draw(reports, lambda fig: fig.savefig(path, dpi=110 if ext == ".png" else None))


def svg(reports: list[RunReport]) -> str:
    """Draw the same figure as `plot` and return it as an SVG document."""
    out = io.BytesIO()
    _draw(reports, lambda fig: fig.savefig(out, format="svg", metadata={"Date": None}))
    return out.getvalue().decode("utf-8")


def _draw(reports: list[RunReport], save) -> None:
    """Build the figure of one or more runs and hand it to `save`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(RC):
        fig = _figure(plt, reports)
        try:
            save(fig)
        finally:
            plt.close(fig)


def context_label(reports: list[RunReport]) -> str:
    """The context axis, saying whose counts it shows."""
    estimated = [r.summary.estimated for r in reports]
    whose = "" if not any(estimated) else ", client cl100k estimates" if all(estimated) \
        else ", client cl100k estimates for the runs the server did not count"
    return f"{axis('context_tokens')} (prompt + completion{whose})"


def _figure(plt, reports: list[RunReport]):
    with_memory = any(r.memory for r in reports)
    rows = 4 if with_memory else 2
    fig = plt.figure(figsize=(12, 14 if with_memory else 8))
    grid = fig.add_gridspec(rows, 2)
    first = fig.add_subplot(grid[0, 0])
    # every panel shares the context axis but the last, whose axis is the fact's distance
    axes = [[first if (i, j) == (0, 0) else fig.add_subplot(
        grid[i, j], sharex=None if with_memory and (i, j) == (3, 1) else first)
        for j in range(2)] for i in range(rows)]
    for ax, key in zip([a for row in axes for a in row], PANELS):
        if len(reports) == 1:
            _tier_bands(ax, reports[0].turns)
        for rep in reports:
            _line(ax, rep, key, several=len(reports) > 1)
        ax.set_ylabel(axis(key))
        ax.set_ylim(bottom=0, top=None if ax.get_ylim()[1] > 0.06 else 1)
        ax.grid(True, alpha=0.3)
    if with_memory:
        _memory((axes[2][0], axes[3][0]), reports)
        _heatmap(axes[2][1], reports[0])
        _by_distance(axes[3][1], reports)
    for ax in axes[-1]:
        ax.set_xlabel(context_label(reports))
    if with_memory:
        axes[3][1].set_xlabel("tokens since the fact was stated")
    if len(reports) > 1 or any(r.ceiling for r in reports):
        first.legend(loc="lower right", fontsize="small")
    fig.suptitle(_title(reports))
    fig.tight_layout()
    return fig


def _memory(axes, reports) -> None:
    """Recall of planted facts per probe round, and the standing rule per turn."""
    recall_ax, rule_ax = axes
    for rep in reports:
        m, name = rep.memory, rep.model
        rounds = [r for r in (m.rounds if m else []) if r.context_tokens is not None]
        recall_ax.errorbar([r.context_tokens for r in rounds], [r.recall for r in rounds], yerr=_yerr(rounds),
                           marker="s", markersize=4, linewidth=1.2, capsize=3, label=f"{name} (95 % intervals)")
        if m and m.effective_context_tokens:
            recall_ax.axvline(m.effective_context_tokens, color="#2e7d32", linestyle=":",
                              label=f"effective context ({name})")
        xs, ys = _points(rep.turns, "rule_kept")
        rule_ax.step(xs, [1 if y else 0 for y in ys], where="post", label=f"rule kept ({name})")
        xs, ys = _points(rep.turns, "repeat_3gram_ratio")
        rule_ax.plot(xs, ys, linestyle="--", linewidth=1, label=f"repeated 3-grams ({name})")
    recall_ax.set_ylabel("recall of planted facts")
    rule_ax.set_ylabel("rule kept (1/0), repeat ratio")
    for ax in axes:
        ax.set_ylim(-0.05, 1.05)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize="x-small")


def _heatmap(ax, rep: RunReport) -> None:
    """Recall by depth of the fact in the context (0 = start) against context size."""
    cells = [(c.context_tokens, c) for c in (rep.memory.grid if rep.memory else []) if c.context_tokens is not None]
    ax.set_ylabel("depth of the fact (0 = start)")
    if not cells:
        return
    xs = sorted({x for x, _ in cells})
    width = (xs[1] - xs[0]) * 0.9 if len(xs) > 1 else max(xs[0] * 0.1, 1)
    step = DEPTH_EDGES[1] - DEPTH_EDGES[0]
    import matplotlib
    from matplotlib.patches import Rectangle
    cmap = matplotlib.colormaps["RdYlGn"]
    for x, c in cells:
        # a cell of fewer than FEW probes is not known enough to colour: grey, hatched
        few = c.n < FEW
        ax.add_patch(Rectangle((x - width / 2, c.depth_from), width, step,
                               facecolor="#dddddd" if few else cmap(c.recall), hatch="//" if few else None,
                               edgecolor="#999999" if few else "none"))
    ax.set_ylim(0, 1)
    ax.set_title(f"recall by depth (green 1, red 0; grey: fewer than {FEW} probes)", fontsize="small")


def _by_distance(ax, reports) -> None:
    """Recall against how long ago the fact was stated, in tokens; the x axis is its own."""
    for rep in reports:
        bands = rep.memory.by_distance if rep.memory else []
        xs = [b.from_ + ((b.to or b.from_ * 2) - b.from_) / 2 for b in bands]
        ax.errorbar(xs, [b.recall for b in bands], yerr=_yerr(bands), marker="o", capsize=3, label=rep.model)
    ax.set_ylabel("recall by distance")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(True, alpha=0.3)


def _yerr(shares: list[Share]) -> list[list[float]]:
    """Each share's 95 % interval as error bars below and above it."""
    return [[s.recall - s.ci95[0] if s.ci95 else 0.0 for s in shares],
            [s.ci95[1] - s.recall if s.ci95 else 0.0 for s in shares]]


def _points(rows: list[Metrics], key: str):
    pts = [(r.context_tokens, getattr(r, key)) for r in rows
           if r.status == Status.OK and r.context_tokens is not None and getattr(r, key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _line(ax, rep: RunReport, key: str, several: bool) -> None:
    xs, ys = _points(rep.turns, key)
    name = f"{rep.model} ({rep.run_id})" if several else "turns"
    line, = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name)
    c = rep.ceiling
    if c and c.context_tokens:
        ax.axvline(c.context_tokens, color=line.get_color() if several else "#c62828",
                   linestyle="--", linewidth=1,
                   label=f"ceiling: {c.reason} at turn {c.turn}")


def _tier_bands(ax, rows: list[Metrics]) -> None:
    """Shade each tier from where the previous one ended to its own last turn."""
    ends: dict[str, float] = {}
    for r in rows:
        if r.context_tokens is not None and r.tier in TIERS:
            ends[r.tier] = max(ends.get(r.tier, 0), r.context_tokens)
    lo: float = min((r.context_tokens for r in rows if r.context_tokens is not None), default=0)
    for tier, hi in ends.items():
        ax.axvspan(lo, max(hi, lo + 1), color=TIER_COLOURS[TIERS.index(tier)], alpha=0.9, zorder=0)
        ax.text(lo, 0.99, " " + tier, transform=ax.get_xaxis_transform(), fontsize="x-small",
                va="top", ha="left", color="#555555")
        lo = hi


def _title(reports: list[RunReport]) -> str:
    if len(reports) > 1:
        return "lalmpipe: " + " vs ".join(r.model for r in reports)
    run = reports[0].run
    server = (run.server.software if run else None) or "server"
    return f"lalmpipe: {reports[0].model} on {server} at {run.base_url if run else '?'}"
