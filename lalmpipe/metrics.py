"""lalm-metrics: derive per-turn metrics from a recording.

Usage:
    lalm-metrics [FILE ...]

Reads the `run` and `turn` records of lalm-chat and writes the `run` record
followed by one `metrics` record per turn (and a scored `recall` record per
`probe`). It uses no clock and no network:
the same recording always gives byte-identical output.

Example:
    lalm-prompts --num-rounds 5 | lalm-chat | lalm-metrics | lalm-report
    lalm-metrics logs/run.jsonl > logs/run.metrics.jsonl
"""
from __future__ import annotations

import argparse
from typing import Iterable, Iterator

from .cli import ExitCode, add_common_args, add_input_args, new_parser, run_command
from .errors import InputError
from .jsonl import RecordWriter, once, read_records
from .ledger import Ledger
from .records import Probe, Run, Turn

PROG = "lalm-metrics"


def derive(records: Iterable) -> Iterator:
    """Yield the run records and one metrics record per turn, in order."""
    conv = Ledger(None)
    for item in records:
        rec = item.record
        if isinstance(rec, Run):
            try:
                conv = Ledger(rec)
            except ValueError as e:
                raise InputError(f"{item.source}:{item.lineno}: {e}") from None
            yield item.raw
        elif isinstance(rec, Turn):
            yield conv.measure(rec)
        elif isinstance(rec, Probe):
            yield conv.score(rec)
        else:
            yield item.raw


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(PROG, "Derive per-turn metrics from a lalm-chat recording: pure, "
                        "deterministic, offline.",
                        ["lalm-prompts --num-rounds 5 | lalm-chat | lalm-metrics | lalm-report",
                         "lalm-metrics logs/run.jsonl | lalm-report --format json"])
    add_input_args(parser)
    add_common_args(parser)
    return parser


def work(args, stdin, stdout, stderr) -> int:
    out = RecordWriter(stdout)
    records = once(read_records(args.inputs, stdin, consumes={"run", "turn", "probe"}, passes={"prompt"},
                                hint={"metrics": "this is already lalm-metrics output"}),
                   lambda message: print(f"{PROG}: warning: {message}", file=stderr))
    for record in derive(records):
        out.write(record)
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)
