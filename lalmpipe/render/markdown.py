"""The Markdown report: a run's summary, tiers and turn (or depth) table; several runs
after their comparison."""
from __future__ import annotations

from ..results import Comparison, RunReport
from .sentences import VERDICT_TITLE, history_sentence, settings_sentence, summary_lines, verdict_lines
from .tables import depth_rows, depth_title, md_table, tier_rows, turn_rows
from .text import depths_title_table


def run_markdown(report: RunReport, plot_path: str | None = None) -> str:
    run = report.run
    out = [f"# {report.model}: lalmpipe run {report.run_id}", "",
           f"Server `{run.base_url if run else '?'}`, started {run.started_at if run else '?'}.", "",
           "| | |", "|---|---|"]
    out += [f"| {label} | {sentence} |" for label, sentence in summary_lines(report)]
    out += ["", "## Tiers", ""] + md_table(tier_rows(report))
    if plot_path:
        out += ["", f"![context growth]({plot_path})"]
    if report.chose_depths:
        out += ["", "## Depths", "", depth_title(report) + ".", ""] + md_table(depth_rows(report))
    else:
        out += ["", "## Turns", ""] + md_table(turn_rows(report))
    return "\n".join(out) + "\n"


def markdown(doc: RunReport | Comparison, plot_path: str | None = None) -> str:
    reports = doc.runs if isinstance(doc, Comparison) else [doc]
    several = isinstance(doc, Comparison)
    head = []
    if isinstance(doc, Comparison):
        head = ["# Comparison", "", "\n".join(md_table(doc.comparison)) + "\n",
                f"History {history_sentence(reports)}.", ""]
        if (settings := settings_sentence(reports)):
            head += [f"Settings: {settings}.", ""]
        if doc.verdicts:
            head += [VERDICT_TITLE + ":", ""] + [f"- {line}" for line in verdict_lines(doc.verdicts, doc.runs)] + [""]
    if several and plot_path:
        head += [f"![context growth]({plot_path})", ""]
    return "\n".join(head + [run_markdown(r, None if several else plot_path) for r in reports])


def depths_markdown(reports: list[RunReport]) -> str:
    title, table, legend = depths_title_table(reports)
    return "\n".join([title + ".", ""] + md_table(table)
                     + ([""] + [f"- {line}" for line in legend] if legend else [])) + "\n"
