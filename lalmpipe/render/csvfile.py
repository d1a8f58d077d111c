"""The CSV reports: every metrics field of every turn, or (--depths) one row per run and
measured turn, the long form a spreadsheet pivots."""
from __future__ import annotations

import csv
import json

import msgspec

from ..records import Metrics
from ..results import Depth, RunReport


def write_turns(reports: list[RunReport], stream) -> None:
    fields = ["run_id"] + [n for n in Metrics.names() if n != "run_id"]
    w = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rep in reports:
        for r in rep.turns:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v
                        for k, v in msgspec.to_builtins(r).items()})


def write_depths(reports: list[RunReport], stream) -> None:
    fields = list(Depth.__struct_encode_fields__)
    w = csv.DictWriter(stream, fieldnames=["run_id", "model", "prefill", *fields], lineterminator="\n")
    w.writeheader()
    for rep in reports:
        for d in rep.depths:
            w.writerow({"run_id": rep.run.run_id if rep.run else None, "model": rep.model,
                        "prefill": rep.prefill, **msgspec.to_builtins(d)})
