"""End to end against the real llama-server and SmolLM2-135M-Instruct, started
and stopped by the tests on free ports of 127.0.0.1 (make server-bin builds it)."""
import json
import os

import pytest

from conftest import run_main
from lalmpipe import chat, metrics, report
from lalmpipe.localserver import LocalServer

HERE = os.path.dirname(os.path.abspath(__file__))
THINK_TEMPLATE = os.path.join(HERE, "fixtures", "chatml-think.jinja")
# makes a 135M model that never thinks emit a <think> block first
THINK_GRAMMAR = 'root ::= "<think>\\n" [a-z ]{10,40} "\\n</think>\\n\\n" [A-Za-z ]{5,30}'


@pytest.fixture(scope="module")
def server():
    with LocalServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def small_server():
    with LocalServer(ctx=512, extra=["--parallel", "1"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def think_server():
    with LocalServer(extra=["--chat-template-file", THINK_TEMPLATE]) as srv:
        yield srv


def pipeline(srv, n, *chat_args):
    """lalm-prompts (the real ones) | lalm-chat | lalm-metrics, in process."""
    from lalmpipe import prompts
    p = run_main(prompts.main, ["--num-rounds", str(n)])
    c = run_main(chat.main, ["--base-url", srv.base_url, "-q", *chat_args], p.out)
    assert c.code == 0, c.err
    m = run_main(metrics.main, [], c.out)
    assert m.code == 0, m.err
    return c.records, [r for r in m.records if r["kind"] == "metrics"], m.out


def test_growing_conversation_on_the_real_server(server, api_key):
    turns, rows, _ = pipeline(server, 6, "--max-tokens", "48", "--temperature", "0")
    run = turns[0]
    assert run["model"] == "smollm2-135m" and run["server"]["software"] == "llama.cpp"
    assert run["server"]["context_window"] >= 2048
    assert [r["status"] for r in rows] == ["ok"] * 6
    prompt_tokens = [r["prompt_tokens"] for r in rows]
    assert all(b > a for a, b in zip(prompt_tokens, prompt_tokens[1:])), prompt_tokens
    for prev, r in zip(rows, rows[1:]):
        # the prefix cache holds (nearly) all of the previous turn's prompt
        assert r["cached_tokens"] >= prev["prompt_tokens"] - 4
    for r in rows:
        assert 0 < r["ttft_s"] < r["e2e_s"]
        assert r["decode_tps"] > 5 and r["prefill_tps"] > 0
        assert r["completion_tokens"] == r["server_timings"]["predicted_n"]
        t = r["server_timings"]
        # client TTFT = server prompt time + the first token's time, within a few ms
        gap_ms = r["ttft_s"] * 1000 - t["prompt_ms"]
        assert 0 <= gap_ms <= t["predicted_per_token_ms"] + 10, (r["turn"], gap_ms, t)
        assert r["truncated"] is False


def test_small_window_ends_on_context_overflow_and_the_report_names_it(small_server, api_key):
    turns, rows, metrics_out = pipeline(small_server, 231, "--max-tokens", "64")
    assert turns[0]["server"]["context_window"] == 512
    last = rows[-1]
    assert last["status"] == "error" and last["error_kind"] == "context_overflow"
    assert all(r["status"] == "ok" for r in rows[:-1]) and 2 <= len(rows) < 231
    doc = json.loads(run_main(report.main, ["--format", "json"], metrics_out).out)
    ceiling = doc["ceiling"]
    assert ceiling["turn"] == last["turn"] and ceiling["reason"] == "context_overflow"
    assert ceiling["context_tokens"] >= 400
    assert ceiling["last_ok_context_tokens"] == rows[-2]["context_tokens"]
    text = run_main(report.main, [], metrics_out).out
    assert f"Ceiling at turn {last['turn']}: the request overflowed the context window" in text


@pytest.mark.parametrize("inline", [False, True])
def test_reasoning_from_the_real_server_both_ways(think_server, api_key, inline):
    extra = {"grammar": THINK_GRAMMAR, **({"reasoning_format": "none"} if inline else {})}
    turns, rows, _ = pipeline(think_server, 2, "--max-tokens", "80", "--extra-body", json.dumps(extra))
    for turn, r in zip(turns[1:], rows):
        deltas = [json.loads(c[1])["choices"][0]["delta"] for c in turn["chunks"]
                  if c[1] != "[DONE]" and json.loads(c[1])["choices"]]
        assert any("reasoning_content" in d for d in deltas) is not inline
        assert ("<think>" in "".join(d.get("content") or "" for d in deltas)) is inline
        assert r["status"] == "ok" and r["has_reasoning"] is True
        assert turn["reasoning"] and "<think>" not in turn["content"]
        assert r["reasoning_tokens"] >= 3 and r["reasoning_s"] > 0
        assert r["ttft_content_s"] > r["ttft_s"]
