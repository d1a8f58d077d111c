"""lalm-report: summarise one or more runs: text, JSON, Markdown, CSV or an HTML page.

Usage:
    lalm-report [--format text|json|markdown|csv|html] [--depths] [--texts RECORDING] [FILE ...]

Reads `run` and `metrics` records (the output of lalm-metrics) and tells how
speed and reasoning changed as the context grew, and where the context broke.
`--format html` writes one self-contained page (lalmpipe.page); `--texts`
names the recording lalm-chat wrote, whose prompts and answers the page shows.

Example:
    lalm-prompts --num-rounds 8 | lalm-chat | lalm-metrics | lalm-report
    lalm-metrics logs/run.jsonl | lalm-report --format json > report.json
    lalm-metrics logs/run.jsonl | lalm-report --format html --texts logs/run.jsonl > run.html
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Iterable

from . import aggregate
from .compare import verdicts
from .cli import (ExitCode, add_common_args, add_input_args, file_ending, new_parser, non_negative_int,
                  run_command)
from .errors import InputError, UsageError
from .jsonl import Line, once, read_records, unwritable
from .records import Metrics, Recall, Run
from .render import csvfile as csv_render
from .render.markdown import depths_markdown, markdown
from .render.page import write_page
from .render.plot import PLOT_FILES, plot
from .render.tables import comparison
from .render.text import depths_text, text
from .results import Comparison, RunReport, to_builtins

PROG = "lalm-report"


def collect(records: Iterable[Line]) -> list[tuple[Run | None, list[Metrics], list[Recall]]]:
    """Group records into runs: (run, metrics rows, recalls) in the order they appear."""
    runs: dict[str, tuple[list, list, list]] = {}
    for item in records:
        rec = item.record
        if not isinstance(rec, (Run, Metrics, Recall)):    # a record passed through
            continue
        run, rows, recalls = runs.setdefault(rec.run_id, ([], [], []))
        if isinstance(rec, Run):
            run.append(rec)
        elif isinstance(rec, Metrics):
            rows.append(rec)
        elif isinstance(rec, Recall):
            recalls.append(rec)
    return [(run[-1] if run else None, rows, recalls) for run, rows, recalls in runs.values()]


def document(reports: list[RunReport]) -> RunReport | Comparison:
    """What --format json writes: one run's report, or the runs and their comparison."""
    if len(reports) == 1:
        return reports[0]
    return Comparison(runs=reports, comparison=comparison(reports), verdicts=verdicts(reports))


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, "Summarise runs: speed against context size, reasoning, memory, "
                   "and the context ceiling; several runs are compared side by side.",
                   ["lalm-prompts --num-rounds 8 | lalm-chat | lalm-metrics | lalm-report",
                    "lalm-metrics logs/run.jsonl | lalm-report --format markdown --plot run.png",
                    "lalm-metrics run.jsonl | lalm-report --format html --texts run.jsonl > run.html",
                    "lalm-report run_a.metrics.jsonl run_b.metrics.jsonl   # comparison"])
    add_input_args(p)
    p.add_argument("--format", choices=("text", "json", "markdown", "csv", "html"), default="text")
    p.add_argument("--texts", action="append", default=[], metavar="RECORDING",
                   help="with --format html: the recording lalm-chat wrote (--output), whose "
                        "prompts, reasoning and answers the page shows; once per recording")
    p.add_argument("--min-fact-age", type=non_negative_int, default=aggregate.MIN_FACT_AGE_TURNS, metavar="N",
                   help="count toward the effective context only facts stated at least N turns "
                        "before they were asked (default: %(default)s)")
    p.add_argument("--depths", action="store_true",
                   help="print only the depth table: one row per measured turn (lalm-chat --at), "
                        "several runs side by side (text, markdown or csv)")
    p.add_argument("--plot", type=file_ending(*PLOT_FILES), metavar="FILE",
                   help="also draw the run(s) against context size (.png or .svg; needs matplotlib)")
    add_common_args(p)
    return p


def work(args, stdin, stdout, stderr) -> int:
    if args.texts and args.format != "html":
        raise UsageError("--texts goes with --format html")
    if args.depths and args.format not in ("text", "markdown", "csv"):
        raise UsageError("--depths goes with --format text, markdown or csv")
    if "-" in args.texts:
        raise UsageError("--texts needs a file: stdin carries the metrics")
    if args.plot:
        check_plot(args.plot)
    hint = "pipe the recording through lalm-metrics first"
    records = once(read_records(args.inputs, stdin, consumes={"run", "metrics", "recall"},
                                passes={"prompt"}, hint={"turn": hint, "probe": hint}),
                   lambda message: print(f"{PROG}: warning: {message}", file=stderr))
    reports = [aggregate.analyse(run, rows, recalls, args.min_fact_age) for run, rows, recalls in collect(records)]
    if not any(r.turns for r in reports):
        raise InputError(f"{', '.join(args.inputs) or 'stdin'}: no metrics records to report")
    if args.plot:
        plot(reports, args.plot)
    if args.format == "html":
        doc = document(reports)
        write_page(reports, args.texts, stdout, None if args.quiet else stderr,
                   doc.verdicts if isinstance(doc, Comparison) else None)
    else:
        emit(reports, args.format, stdout, args.plot, args.depths)
    return ExitCode.OK


def check_plot(path: str) -> None:
    """Refuse a --plot that cannot be drawn, before any input is read."""
    why = unwritable(path)
    if why:
        raise InputError(f"cannot write --plot {path}: {why}")
    if importlib.util.find_spec("matplotlib") is None:
        raise InputError("--plot needs matplotlib, which is not installed: pip install 'lalmpipe[plot]'")


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)


def emit(reports: list[RunReport], fmt: str, stdout, plot_path: str | None = None, depths: bool = False) -> None:
    if depths and fmt == "csv":
        csv_render.write_depths(reports, stdout)
    elif depths:
        stdout.write(depths_markdown(reports) if fmt == "markdown" else depths_text(reports))
    elif fmt == "json":
        stdout.write(json.dumps(to_builtins(document(reports)), indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        csv_render.write_turns(reports, stdout)
    elif fmt == "markdown":
        stdout.write(markdown(document(reports), plot_path))
    else:
        stdout.write(text(document(reports)))
    stdout.flush()
