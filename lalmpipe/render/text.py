"""The text report: a run's turn (or depth) table and its summary, aligned for a terminal;
several runs each in turn, then their comparison."""
from __future__ import annotations

from ..results import Comparison, RunReport
from .sentences import VERDICT_TITLE, history_sentence, settings_sentence, summary_lines, verdict_lines
from .tables import depth_comparison, depth_rows, depth_title, text_table, turn_rows


def run_text(report: RunReport) -> str:
    run = report.run
    lines = [f"{report.model} at {run.base_url if run else '?'} (run {report.run_id})", ""]
    if report.chose_depths:
        lines += [depth_title(report), ""] + text_table(depth_rows(report), right=True)
    else:
        lines += text_table(turn_rows(report), right=True)
    lines.append("")
    lines += [f"{label:<13}{sentence}" for label, sentence in summary_lines(report)]
    return "\n".join(lines) + "\n"


def text(doc: RunReport | Comparison) -> str:
    reports = doc.runs if isinstance(doc, Comparison) else [doc]
    parts = [run_text(r) for r in reports]
    if isinstance(doc, Comparison):
        parts.append("Comparison\n\n" + "\n".join(text_table(doc.comparison, right=False))
                     + f"\n\nHistory      {history_sentence(reports)}\n"
                     + (f"Settings     {settings}\n" if (settings := settings_sentence(reports)) else ""))
        if doc.verdicts:
            parts.append(VERDICT_TITLE + "\n\n" + "\n".join(verdict_lines(doc.verdicts, doc.runs)) + "\n")
        if any(r.chose_depths for r in reports):
            parts.append(depths_text(reports))
    return "\n".join(parts)


def depths_title_table(reports: list[RunReport]) -> tuple[str, list[list[str]], list[str]]:
    """Only the depth table (--depths): one run's, or the runs' side by side, and its legend."""
    if len(reports) == 1:
        return depth_title(reports[0]), depth_rows(reports[0]), []
    table, legend = depth_comparison(reports)
    return f"Depths; history {history_sentence(reports)}", table, legend


def depths_text(reports: list[RunReport]) -> str:
    title, table, legend = depths_title_table(reports)
    return "\n".join([title, ""] + text_table(table, right=True) + ([""] + legend if legend else [])) + "\n"
