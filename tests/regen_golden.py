"""Regenerate the golden outputs on purpose: python tests/regen_golden.py; review the diff."""
import io
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import json  # noqa: E402

from lalmpipe import metrics, report  # noqa: E402
from lalmpipe.results import schema  # noqa: E402

FIXTURES = os.path.join(HERE, "fixtures")
SCHEMA = os.path.join(os.path.dirname(HERE), "docs", "report.schema.json")
CASES = ["llama", "dialects"]
REPORTS = ["text", "json", "markdown", "csv"]


def run(main, argv, stdin=b""):
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.BytesIO(stdin), stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def outputs(case):
    """Yield (file name, text) of every golden output of one case."""
    m = run(metrics.main, [os.path.join(FIXTURES, f"{case}.in.jsonl")])
    yield f"{case}.metrics.out.jsonl", m
    for fmt in REPORTS:
        ext = {"text": "txt", "json": "json", "markdown": "md", "csv": "csv"}[fmt]
        yield f"{case}.report.out.{ext}", run(report.main, ["--format", fmt], m.encode())


def schema_text() -> str:
    """The JSON Schema of lalm-report's JSON, as generated from lalmpipe.results."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    with open(SCHEMA, "w", encoding="utf-8") as fp:
        fp.write(schema_text())
    print("wrote", os.path.relpath(SCHEMA))
    for case in CASES:
        for name, text in outputs(case):
            with open(os.path.join(FIXTURES, name), "w", encoding="utf-8") as fp:
                fp.write(text)
            print("wrote", name)
