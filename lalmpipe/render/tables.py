"""The tables every renderer shows, as rows of cells: turns, tiers, depths, the comparison
of runs; and the two ways of laying rows out as text (aligned columns, Markdown)."""
from __future__ import annotations

from typing import Callable

from ..records import Metrics
from ..results import Depth, RunReport
from ..vocab import CountSource, Status
from .columns import approx, cell, count, heading

# the per-turn table of the text and Markdown reports
TURN_COLUMNS = ("turn", "tier", "status", "context_tokens", "ttft_s", "prefill_tps", "decode_tps",
                "completion_tokens", "reasoning_tokens", "cached_tokens")
TIER_COLUMNS = ("tier", "turns", "ttft_mean_s", "decode_tps_mean", "max_context_tokens",
                "reasoning_turn_share", "reasoning_token_share")

# a count the client made, where the server gave none, is marked as an estimate
ESTIMATED: dict[str, Callable[[Metrics], bool]] = {
    "context_tokens": lambda r: r.context_tokens_source == CountSource.ESTIMATE,
    "completion_tokens": lambda r: r.tokens_source == CountSource.TIKTOKEN}


def status_cell(r: Metrics) -> str:
    """A turn's outcome in a word: ok, ok* (truncated), or its failure's kind."""
    if r.status == Status.OK:
        return "ok*" if r.truncated else "ok"
    return str(r.error_kind or r.status)


def turn_state(r: Metrics) -> str:
    """ok, truncated or failed: how a turn's row is coloured."""
    return "failed" if r.status != Status.OK else "truncated" if r.truncated else "ok"


def turn_cell(r: Metrics, field: str) -> str:
    """A cell of the turn table: the status, or the field formatted and marked where the client estimated it."""
    if field == "status":
        return status_cell(r)
    return approx(cell(getattr(r, field), field), field in ESTIMATED and ESTIMATED[field](r))


def turn_rows(report: RunReport, columns=TURN_COLUMNS) -> list[list[str]]:
    """The turn table, heading first."""
    return [[heading(c) for c in columns]] + [[turn_cell(r, c) for c in columns] for r in report.turns]


def tier_rows(report: RunReport) -> list[list[str]]:
    """The tier table, heading first."""
    return [[heading(c) for c in TIER_COLUMNS]] + \
        [[cell(getattr(t, c), c) for c in TIER_COLUMNS] for t in report.tiers]


# ---- depths ----

def _recall_cell(d: Depth) -> str:
    return f"{d.recalled}/{d.probes}" if d.probes else "-"


def _spread(field: str) -> Callable[[Depth], str]:
    """A depth's mean over its repeats and their sd, as llama-bench writes them: "12.669 ± 0.412"."""
    def write(d: Depth) -> str:
        spread = getattr(d, field.removesuffix("_s") + "_sd")
        return cell(getattr(d, field), field) + ("" if spread is None else f" ± {cell(spread, field)}")
    return write


# the depth table: its heading, how to write a row's cell
DEPTH_COLUMNS: tuple[tuple[str, Callable[[Depth], str]], ...] = (
    ("target", lambda d: cell(d.target_tokens)),
    ("depth", lambda d: approx(cell(d.context_tokens), d.context_tokens_source == CountSource.ESTIMATE)),
    ("cl100k", lambda d: cell(d.context_tokens_est)),
    ("turn", lambda d: cell(d.turn)),
    (heading("ttft_s"), _spread("ttft_s")),
    (heading("prefill_tps"), _spread("prefill_tps")),
    (heading("cached_share"), lambda d: cell(d.cached_share, "cached_share")),
    (heading("decode_tps"), _spread("decode_tps")),
    (heading("reasoning_tokens"), lambda d: cell(d.reasoning_tokens)),
    (heading("recall"), _recall_cell))
# per run in a comparison of depths: all but the target, the depths and the turn, which the rows give
DEPTH_COMPARED = DEPTH_COLUMNS[4:]


def depth_title(report: RunReport) -> str:
    unit = ", depth in client estimates" if report.summary.estimated else ""
    return (f"Depths ({report.prefill}: "
            + ("every measured turn a full prefill" if report.prefill == "cold"
               else "the server's prefix cache served the share cached")
            + f"{unit}; recall: facts recalled of those asked after the turn)")


def depth_rows(report: RunReport) -> list[list[str]]:
    """The depth table of one run, heading first."""
    return [[h for h, _ in DEPTH_COLUMNS]] + [[get(d) for _, get in DEPTH_COLUMNS] for d in report.depths]


def depth_comparison(reports: list[RunReport]) -> tuple[list[list[str]], list[str]]:
    """The runs' depths side by side, heading first, one row per prompt any run measured
    (matched by prompt, so that runs with and without --repeat line up); the depth is the
    client's cl100k count, the same for every server over a shared history. Also the
    legend of the numbered runs."""
    by_prompt = [{d.prompt_id: d for d in r.depths} for r in reports]
    prompts = sorted({p for m in by_prompt for p in m if p is not None})
    head = ["prompt", "target", "depth (cl100k)"] + [f"{h} [{i}]" for i in range(1, len(reports) + 1)
                                                     for h, _ in DEPTH_COMPARED]
    rows = []
    for p in prompts:
        est = sorted({e for e in (m[p].context_tokens_est for m in by_prompt if p in m) if e is not None})
        depth = "-" if not est else f"{est[0]}" if len(est) == 1 else f"{est[0]}-{est[-1]}"
        target = next((m[p].target_tokens for m in by_prompt if p in m and m[p].target_tokens), None)
        rows.append([str(p), cell(target), depth]
                    + [get(m[p]) if p in m else "-" for m in by_prompt for _, get in DEPTH_COMPARED])
    legend = [f"[{i}] run {r.run_id}: {r.name}, {r.prefill}" for i, r in enumerate(reports, 1)]
    return [head] + rows, legend


# ---- the comparison of runs ----

def _history_cell(r: RunReport) -> str:
    source = r.run.settings.history if r.run else None
    return f"{source.sha256[:12]} (run {source.run_id})" if source else "own answers"


def _ceiling_cell(r: RunReport) -> str:
    c = r.ceiling
    return "none" if c is None else f"{c.reason} at {count(c.context_tokens)} (turn {c.turn})"


def _summary(field: str) -> tuple[str, Callable[[RunReport], str]]:
    return heading(field), lambda r: cell(getattr(r.summary, field), field)


# a row each: its label, how to write a run's cell
COMPARE: tuple[tuple[str, Callable[[RunReport], str]], ...] = (
    ("name", lambda r: r.name),
    ("model", lambda r: r.model),
    ("server settings", lambda r: " ".join(f"{k}={v}" for k, v in (r.server_settings or {}).items()
                                          if k not in ("engine", "model-file")) or "-"),
    ("server", lambda r: cell((r.run.server.software or r.run.base_url) if r.run else None)),
    (heading("kv_cache_mib"), lambda r: cell(r.kv_cache_mib, "kv_cache_mib")),
    ("turns ok", lambda r: f"{r.summary.ok}/{r.summary.turns}"),
    _summary("ttft_mean_s"),
    _summary("ttft_slope_s_per_1k_tokens"),
    _summary("decode_tps_start"),
    _summary("decode_ratio_end_to_start"),
    _summary("max_context_tokens"),
    (heading("effective_context_tokens"),
     lambda r: cell(r.memory.effective_context_tokens if r.memory else None)),
    ("history", _history_cell),
    ("ceiling", _ceiling_cell))


def comparison(reports: list[RunReport]) -> list[list[str]]:
    """One row per measure, one column per run."""
    return [["run"] + [r.run_id for r in reports]] + \
        [[label] + [get(r) for r in reports] for label, get in COMPARE]


# ---- layouts ----

def text_table(rows: list[list[str]], right: bool) -> list[str]:
    """Columns as wide as their widest cell, numbers to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    pad = str.rjust if right else str.ljust
    return ["  ".join(pad(c, w) for c, w in zip(row, widths)).rstrip() for row in rows]


def md_table(rows: list[list[str]]) -> list[str]:
    """A Markdown table of rows, heading first."""
    head, body = rows[0], rows[1:]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(row) + " |" for row in body]
