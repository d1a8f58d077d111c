"""vLLM (CPU build): usage on a chunk with no choices, the window as
max_model_len in /v1/models, HTTP 400 before any event at the window."""
from live import WINDOW_TOKENS, assert_counts_are_the_engines, assert_usage_on_a_chunk_without_choices, run_fixture


run = run_fixture("vllm")


def test_the_counts_are_the_engines_usage(run):
    assert_counts_are_the_engines(run)
    assert_usage_on_a_chunk_without_choices(run)


def test_the_preflight_reads_the_window_from_max_model_len(run):
    assert run.run["server"]["context_window"] == WINDOW_TOKENS
    assert run.run["server"]["context_source"] == "/v1/models max_model_len"


def test_the_long_turn_overflows_the_window(run):
    last, turn = run.rows[-1], run.turns[-1]
    assert (turn["http_status"], turn["chunks"]) == (400, [])
    assert (last["status"], last["error_kind"]) == ("error", "context_overflow")
    assert run.report["ceiling"]["turn"] == 5 and run.report["ceiling"]["reason"] == "context_overflow"
