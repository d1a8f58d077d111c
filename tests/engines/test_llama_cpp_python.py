"""llama-cpp-python's server: no usage at all (include_usage ignored), no
window told anywhere, and an overflowing streamed request answered with HTTP
200 and an empty body."""
import pytest

from live import engine, events, recorded_run, usage


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with engine("llama-cpp-python") as srv:
        yield recorded_run(srv, "llama-cpp-python", tmp_path_factory.mktemp("llama-cpp-python"))


def test_no_usage_comes_so_the_counts_are_the_clients_estimates(run):
    assert [r["status"] for r in run.rows[:4]] == ["ok"] * 4
    for turn, row in zip(run.turns[:4], run.rows):
        assert usage(turn) is None and events(turn)[0]["choices"][0]["delta"].get("role") == "assistant"
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
        assert row["context_tokens"] == row["context_tokens_est"] > row["prompt_tokens"]
        assert (row["prompt_tokens_source"], row["context_tokens_source"]) == ("estimate", "estimate")
        assert 0 < row["ttft_s"] < row["e2e_s"] and row["decode_tps"] > 0
    context = [r["context_tokens"] for r in run.rows[:4]]
    assert all(b > a for a, b in zip(context, context[1:])), context


def test_the_preflight_learns_no_window(run):
    assert run.run["server"]["context_window"] is None
    assert run.run["server"]["context_source"] is None


def test_the_long_turn_gets_an_empty_answer_the_ceiling(run):
    last, turn = run.rows[-1], run.turns[-1]
    assert (turn["http_status"], turn["chunks"]) == (200, [])
    assert (last["status"], last["error_kind"]) == ("error", "empty")
    assert run.report["ceiling"]["turn"] == 5 and run.report["ceiling"]["reason"] == "empty"
