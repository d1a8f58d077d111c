"""llama-cpp-python's server: no usage at all (include_usage ignored), no
window told anywhere, and an overflowing streamed request answered with HTTP
200 and an empty body; `: ping` comments every 15 s while a long prompt
is read."""
import json
import os

import pytest

from live import FIXTURES, engine, events, long_prompt, raw_stream, recording, run_fixture, usage


run = run_fixture("llama-cpp-python")


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


PING_EVERY_S = 15
PING_WINDOW_TOKENS = 4096
PING_PROMPT_TOKENS = 2500   # a prefill of tens of seconds here on 2 cores


@pytest.fixture(scope="module")
def long_prefill():
    with engine("llama-cpp-python", ctx=PING_WINDOW_TOKENS) as srv:
        lines = raw_stream(srv, long_prompt(PING_PROMPT_TOKENS), max_tokens=8)
    if recording():
        # the fast suite serves these lines again, at their times, to lalm-chat
        assert any(line.startswith(": ping") for _, line in lines), "the prefill was too short to show a ping"
        with open(os.path.join(FIXTURES, "llama-cpp-python-ping.json"), "w") as fp:
            json.dump({"engine": "llama-cpp-python", "window_tokens": PING_WINDOW_TOKENS, "lines": lines}, fp,
                      indent=0)
    return lines


def test_a_long_prefill_is_kept_alive_with_ping_comments(long_prefill):
    pings = [t for t, line in long_prefill if line.startswith(": ping - ")]
    first_data = next(t for t, line in long_prefill if line.startswith("data: "))
    # one comment every 15 s from the start of the answer, the first data event after them
    assert abs(sum(t < first_data for t in pings) - first_data / PING_EVERY_S) < 1
    assert all(abs(b - a - PING_EVERY_S) < 1 for a, b in zip(pings, pings[1:]))
    assert long_prefill[-2][1] == "data: [DONE]\r\n" or long_prefill[-2][1].startswith("data: [DONE]")
