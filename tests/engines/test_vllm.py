"""vLLM (CPU build): usage on a chunk with no choices, the window as
max_model_len in /v1/models, HTTP 400 before any event at the window."""
import pytest

from live import WINDOW_TOKENS, assert_counts_are_the_engines, engine, events, recorded_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with engine("vllm") as srv:
        yield recorded_run(srv, "vllm", tmp_path_factory.mktemp("vllm"))


def test_the_counts_are_the_engines_usage(run):
    assert_counts_are_the_engines(run)
    for turn in run.turns[:4]:
        assert [e for e in events(turn) if e.get("usage")][-1]["choices"] == []


def test_the_preflight_reads_the_window_from_max_model_len(run):
    assert run.run["server"]["context_window"] == WINDOW_TOKENS
    assert run.run["server"]["context_source"] == "/v1/models max_model_len"


def test_the_long_turn_overflows_the_window(run):
    last, turn = run.rows[-1], run.turns[-1]
    assert (turn["http_status"], turn["chunks"]) == (400, [])
    assert (last["status"], last["error_kind"]) == ("error", "context_overflow")
    assert run.report["ceiling"]["turn"] == 5 and run.report["ceiling"]["reason"] == "context_overflow"
