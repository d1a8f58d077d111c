"""Render one or more runs as a single self-contained HTML page (lalm-report --format html).

The page holds everything it shows: the figures as inline SVG, the styles and
a little optional script in the page itself, nothing fetched. What a model or
a server wrote (answers, reasoning, prompts, error bodies, the model's name)
is untrusted: the template escapes every value (Jinja2 autoescaping), the
figures are cleaned (lalmpipe.inline_svg), and a Content-Security-Policy lets
only the page's own script run.

The metrics records carry no texts; the recording lalm-chat wrote does. Given
the recording (`--texts`), each turn of the page opens on its prompt, its
reasoning and its answer, as the model wrote them.
"""
from __future__ import annotations

import base64
import importlib.util
import hashlib
import json
from dataclasses import dataclass
from importlib import resources

import msgspec

from .. import __version__
from ..jsonl import read_records
from ..records import Metrics, Run, Turn
from ..results import RunReport, Verdict
from .columns import cell, heading
from .inline_svg import inline_svg
from .plot import svg
from .sentences import VERDICT_TITLE, history_sentence, settings_sentence, summary_lines, verdict_lines
from .tables import (comparison, depth_comparison, depth_rows, depth_title, status_cell, tier_rows, turn_cell,
                     turn_state)

PROG = "lalm-report"
TEMPLATE = "report.html.j2"
SCRIPT = "report.js"
# the per-turn table: a column a field, numbers to the right
TURN_COLUMNS = ("turn", "tier", "context_tokens", "ttft_s", "prefill_tps", "decode_tps",
                "reasoning_tokens", "status")
TEXT_COLUMNS = ("tier", "status")


@dataclass(frozen=True)
class TurnText:
    """What one turn's request and answer said, from the recording."""
    prompt: str
    reasoning: str
    answer: str
    error: str | None         # the failure's kind and message
    error_body: str | None    # the server's response body, as sent


def turn_text(rec: Turn) -> TurnText:
    error = rec.error
    return TurnText(prompt=rec.prompt.text, reasoning=rec.reasoning, answer=rec.content,
                    error=f"{error.kind}: {error.message}" if error else None,
                    error_body=error.body if error else None)


def read_texts(paths: list[str]) -> dict[tuple[str, int], TurnText]:
    """Read the turns' texts from lalm-chat recordings, by (run id, turn)."""
    texts = {}
    for item in read_records(paths, None, consumes={"turn"},
                             passes={"run", "probe", "prompt", "metrics", "recall"}):
        if isinstance(item.record, Turn):
            texts[(item.record.run_id, item.record.turn)] = turn_text(item.record)
    return texts


def _package_text(name: str) -> str:
    return (resources.files("lalmpipe") / "templates" / name).read_text(encoding="utf-8")


def _environment():
    import jinja2
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def script_hash(script: str) -> str:
    """The CSP source that lets exactly this inline script run."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode() + "'"


def render(reports: list[RunReport], texts: dict[tuple[str, int], TurnText] | None = None,
           figures: bool = True, verdicts: list[Verdict] | None = None) -> str:
    """The page of one or more runs."""
    from markupsafe import Markup
    script = _package_text(SCRIPT)
    several = len(reports) > 1
    figure = _figures(figures)
    view = {"title": "lalmpipe: " + " vs ".join(r.model for r in reports),
            "version": __version__, "script": Markup(script), "script_hash": script_hash(script),
            "comparison": comparison(reports) if several else None,
            "history": history_sentence(reports) if several else None,
            "settings_sentence": settings_sentence(reports) if several else None,
            "verdicts": verdict_lines(verdicts, reports) if several and verdicts else None,
            "verdict_title": VERDICT_TITLE,
            "depth_comparison": depth_comparison(reports)
            if several and any(r.chose_depths for r in reports) else None,
            "comparison_figure": figure(reports, "c-") if several else None,
            "runs": [run_view(r, i, texts, figure) for i, r in enumerate(reports, 1)],
            "figure_note": None if figures else "no figures: matplotlib is not installed "
                                                "(pip install 'lalmpipe[plot]')"}
    return _environment().from_string(_package_text(TEMPLATE)).render(view)


def _figures(enabled: bool):
    """A function drawing the figure of some runs as inline SVG, or giving None."""
    if not enabled:
        return lambda reports, prefix: None

    def draw(reports: list[RunReport], prefix: str):
        from markupsafe import Markup
        return Markup(inline_svg(svg(reports), prefix))
    return draw


def texts_of(report: RunReport, texts: dict | None) -> list[TurnText | None]:
    """The texts of a report's turns, in its order (None where the recording has none)."""
    return [(texts or {}).get((t.run_id, t.turn)) for t in report.turns]


def run_view(report: RunReport, index: int, texts, figure) -> dict:
    """What the template shows of one run."""
    run = report.run
    settings = msgspec.to_builtins(run.settings) if run else {}
    found = texts_of(report, texts)
    tiers = tier_rows(report)
    return {"index": index, "model": report.model, "run_id": report.run_id,
            # a depth run is warm or cold: say which beside its id
            "prefill": report.prefill if report.chose_depths else None,
            "identity": identity(run), "params": _pairs(run.params if run else {}),
            "settings": _pairs({k: v for k, v in settings.items() if k != "facts"}),
            "facts": settings.get("facts") or [],
            "summary": summary_lines(report), "ceiling": report.ceiling is not None,
            "figure": figure([report], f"r{index}-"),
            "tier_head": tiers[0], "tiers": tiers[1:],
            "depths": depth_rows(report) if report.chose_depths else None,
            "depth_title": depth_title(report),
            "turn_head": [heading(c) for c in TURN_COLUMNS],
            "turns": [turn_view(t, text) for t, text in zip(report.turns, found)],
            "texts_included": any(found)}


def identity(run: Run | None) -> list[tuple[str, str]]:
    """The run's identity, as (label, value) pairs; what is not known is left out."""
    if run is None:
        return []
    server = run.server
    window = server.context_window
    asked = run.model if run.served_model and run.model and run.model != run.served_model else None
    pairs = [("model", run.served_model or run.model), ("model asked for", asked), ("base URL", run.base_url),
             ("server", " ".join(str(x) for x in (server.software, server.build) if x)),
             ("context window", f"{window:,} tokens" + (f" ({server.context_source})" if server.context_source else "")
              if window else "not told by the server"),
             ("run", run.run_id), ("started", run.started_at),
             ("client", " ".join(str(v) for v in run.tool.values()))]
    return [(k, str(v)) for k, v in pairs if v]


def _pairs(d: dict) -> list[tuple[str, str]]:
    """Settings as (name, value) pairs: strings as they are, the rest as JSON."""
    return [(k, v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) for k, v in d.items()]


def turn_view(row: Metrics, text: TurnText | None) -> dict:
    """One row of the per-turn table: its cells (shown, and the value to sort by) and texts."""
    cells = [(turn_cell(row, c), status_cell(row) if c == "status" else _sort_value(getattr(row, c)))
             for c in TURN_COLUMNS]
    return {"turn": row.turn, "tier": row.tier or "?", "cells": cells,
            "numeric": [c not in TEXT_COLUMNS for c in TURN_COLUMNS],
            "state": turn_state(row), "details": _details(row), "text": text}


def _sort_value(v):
    return str(v) if isinstance(v, str) else v


def _details(row: Metrics) -> list[tuple[str, str]]:
    """The turn's other measures, shown when its row is opened."""
    fields = ("prompt_id", "prompt_tokens", "cached_tokens", "completion_tokens", "content_tokens",
              "tokens_source", "e2e_s", "reasoning_s", "itl_p95_s", "finish_reason", "error_kind")
    return [(f, cell(getattr(row, f), f)) for f in fields if getattr(row, f) is not None]


def write_page(reports: list[RunReport], recordings: list[str], stdout, stderr=None,
               verdicts: list[Verdict] | None = None) -> None:
    """Write the page of the reports, with the texts of the recordings, and say
    on stderr (when given) how large it is and how many turns have their texts."""
    texts = read_texts(recordings) if recordings else None
    page = render(reports, texts, figures=importlib.util.find_spec("matplotlib") is not None,
                  verdicts=verdicts or [])
    stdout.write(page)
    stdout.flush()
    if stderr is None:
        return
    turns = sum(len(r.turns) for r in reports)
    with_text = sum(text is not None for r in reports for text in texts_of(r, texts))
    print(f"{PROG}: a page of {len(page.encode('utf-8')) / 1024:,.0f} KiB: "
          f"{len(reports)} run{'s' if len(reports) > 1 else ''}, {turns} turns, "
          f"{with_text} with their texts", file=stderr)
    if recordings and not with_text:
        print(f"{PROG}: warning: {', '.join(recordings)} holds no turn of "
              f"{'these runs' if len(reports) > 1 else 'this run'}", file=stderr)
