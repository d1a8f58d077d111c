"""transformers serve: the role chunk at t = 0, before prefill; usage on the
finish chunk; no [DONE]; no window told and none enforced."""
import glob
import json
import subprocess

import pytest

from conftest import ROOT
from live import WINDOW_TOKENS, assert_counts_are_the_engines, events, run_fixture


run = run_fixture("transformers", ctx=None)


def test_the_counts_are_the_engines_usage_on_the_finish_chunk(run):
    assert_counts_are_the_engines(run)
    for turn in run.turns[:4]:
        finish = [e for e in events(turn) if e.get("usage")]
        assert len(finish) == 1 and finish[0]["choices"][0]["finish_reason"] in ("stop", "length")
        assert turn["chunks"][-1][1] != "[DONE]"


def test_the_role_chunk_before_prefill_is_not_the_first_token(run):
    for turn, row in zip(run.turns[:4], run.rows):
        first = events(turn)[0]["choices"][0]["delta"]
        assert first == {"role": "assistant"}
        # the first token comes after the prefill, well after the role chunk
        assert row["ttft_s"] > turn["chunks"][0][0]
        assert row["ttft_s"] == pytest.approx(turn["chunks"][1][0], abs=0.002)


def test_the_preflight_learns_no_window(run):
    assert run.run["server"]["context_window"] is None
    assert run.run["server"]["context_source"] is None


def test_no_window_is_enforced_so_there_is_no_ceiling(run):
    last = run.rows[-1]
    # the long turn, half again as long as the others' window, is answered in full
    assert last["status"] == "ok" and last["prompt_tokens"] > WINDOW_TOKENS * 1.2
    assert run.report["ceiling"] is None


def test_make_demo_with_a_model_alias_runs_on_transformers(tmp_path):
    # transformers serve answers only to the model's folder: the demo must not send MODEL's alias
    done = subprocess.run(["make", "-s", "-o", "install", "demo", "ENGINE=transformers", "MODEL=smollm2-135m",
                           "DEMO_ROUNDS=2", "DEMO_PROBES=1", "DEMO_FACT_AGE=1", f"LOGS={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    [recording] = [p for p in glob.glob(f"{tmp_path}/lalm_benchmark_run_*.jsonl") if not p.endswith(".metrics.jsonl")]
    with open(recording) as fp:
        records = [json.loads(line) for line in fp]
    assert records[0]["model"].endswith("smollm2-135m-hf")
    assert [r["status"] for r in records if r["kind"] == "turn"] == ["ok", "ok"]
