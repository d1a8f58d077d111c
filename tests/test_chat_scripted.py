"""lalm-chat and lalm-metrics against a scripted SSE server on 127.0.0.1 whose
schedule and counts are the truth."""
import json

import pytest

from conftest import SECRET, prompts_jsonl, run_main
from lalmpipe import chat, metrics
from lalmpipe.replay import Script
from scripted import DIALECTS, ForkedServer as ScriptedServer, deltas_script, stream

TTFTS = [0.120, 0.180, 0.240]


def chat_and_measure(server, prompts, *extra):
    ran = run_main(chat.main, ["--base-url", server.base_url, "--model", "scripted", "-q", *extra],
                   prompts_jsonl(prompts))
    assert ran.code == 0, ran.err
    measured = run_main(metrics.main, [], ran.out)
    assert measured.code == 0, measured.err
    return ran, [r for r in measured.records if r["kind"] == "metrics"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_metrics_match_the_schedule_in_every_dialect(dialect, api_key):
    made = [stream(dialect, n_reasoning=30, n_content=40, ttft_s=TTFTS[i], rate_tps=100.0,
                   prompt_tokens=50 + 100 * i, cached=40 * i) for i in range(3)]
    truths = [truth for _, truth in made]
    with ScriptedServer(lambda i, body: made[i][0]) as server:
        _, rows = chat_and_measure(server, ["first question", "second", "third"])
    assert len(rows) == 3
    for row, truth in zip(rows, truths):
        assert row["status"] == "ok"
        assert abs(row["ttft_s"] - truth.ttft_s) < 0.005, (row["turn"], row["ttft_s"])
        assert abs(row["ttft_content_s"] - truth.ttft_content_s) < 0.005
        assert row["decode_tps"] == pytest.approx(truth.rate_tps, rel=0.03)
        assert abs(row["reasoning_tokens"] - truth.reasoning_tokens) <= 2
        assert abs(row["content_tokens"] - truth.content_tokens) <= 2
        assert row["has_reasoning"] is (truth.reasoning_tokens > 0)
        if dialect == "no_usage":
            assert row["prompt_tokens"] is None and row["completion_tokens"] is None
            assert row["tokens_source"] == "tiktoken"
        else:
            assert row["prompt_tokens"] == truth.prompt_tokens
            assert row["completion_tokens"] == truth.completion_tokens
            assert row["context_tokens"] == truth.prompt_tokens + truth.completion_tokens
            assert row["cached_tokens"] == 40 * (row["turn"] - 1)
            assert row["tokens_source"] == ("server" if dialect == "vllm" else "server+tiktoken")
        if truth.reasoning_tokens:
            # 30 reasoning chunks at 100/s (+2 tag chunks inline): 0.29 s, or 0.31 s
            expected = 0.29 if dialect != "think_inline" else 0.32
            assert row["reasoning_s"] == pytest.approx(expected, abs=0.006)
    if dialect == "reasoning_content":
        assert rows[1]["server_timings"]["cache_n"] == 40
        assert rows[1]["prefill_tps"] == pytest.approx((150 - 40) / TTFTS[1], rel=0.03)


def test_request_carries_the_defaults_and_the_whole_history(api_key):
    answers = ["Alpha answer.", "Beta answer."]

    def answer(i, body):
        return _answer_script(answers[i] if i < 2 else "Gamma.")

    with ScriptedServer(answer) as server:
        ran, _ = chat_and_measure(server, ["Q one", "Q two", "Q three"])
        reqs = server.requests
    body = reqs[0]["body"]
    assert body["temperature"] == 0.7
    assert body["max_tokens"] == 32768
    assert body["reasoning_effort"] == "low"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "scripted"
    assert reqs[2]["body"]["messages"] == [
        {"role": "user", "content": "Q one"}, {"role": "assistant", "content": "Alpha answer."},
        {"role": "user", "content": "Q two"}, {"role": "assistant", "content": "Beta answer."},
        {"role": "user", "content": "Q three"}]
    assert reqs[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in ran.out and SECRET not in ran.err


def _answer_script(text, reasoning=None):
    from scripted import sse
    events = [(0.01, json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]}))]
    if reasoning:
        events.append((0.02, json.dumps({"choices": [{"index": 0, "delta": {"reasoning_content": reasoning}}]})))
    events += [(0.03, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
               (0.04, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
               (0.05, "[DONE]")]
    return sse(*events)


def test_reasoning_stays_out_of_the_history_unless_kept(api_key):
    for flag, expected in ((), "Answer."), (("--keep-reasoning",), "<think>\nmull\n</think>\n\nAnswer."):
        with ScriptedServer(lambda i, b: _answer_script("Answer.", reasoning="mull")) as server:
            chat_and_measure(server, ["a", "b"], *flag)
            assert server.requests[1]["body"]["messages"][1]["content"] == expected


# an answer wrapped in whitespace, with its reasoning inline, as a server streams it
SPACED = ["\n", "<think>", "\nweigh it\n", "</think>", "\n\n", "  The answer", " is 42.  ", "\n"]


def test_the_history_gets_the_answer_exactly_as_streamed(api_key):
    for flag in (), ("--keep-reasoning",):       # inline reasoning is in the content already
        with ScriptedServer(lambda i, b: deltas_script([{"content": d} for d in SPACED])) as server:
            ran, _ = chat_and_measure(server, ["a", "b"], *flag)
            history = server.requests[1]["body"]["messages"]
        assert history[1] == {"role": "assistant", "content": "".join(SPACED)}
        turn = ran.records[1]
        assert (turn["content"], turn["reasoning"]) == ("The answer is 42.", "weigh it")
    separate = [{"reasoning_content": " mull "}, {"content": " Answer. "}]
    with ScriptedServer(lambda i, b: deltas_script(separate)) as server:
        chat_and_measure(server, ["a", "b"], "--keep-reasoning")
        assert server.requests[1]["body"]["messages"][1]["content"] == "<think>\nmull\n</think>\n\n Answer. "


def test_options_change_the_request(api_key):
    with ScriptedServer(lambda i, b: _answer_script("ok")) as server:
        chat_and_measure(server, ["x"], "--temperature", "0.2", "--max-tokens", "99",
                         "--reasoning-effort", "", "--system", "Be brief.",
                         "--extra-body", '{"reasoning_format": "none"}')
        body = server.requests[0]["body"]
    assert body["temperature"] == 0.2 and body["max_tokens"] == 99
    assert "reasoning_effort" not in body
    assert body["reasoning_format"] == "none"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_run_record_says_what_was_sent_and_never_the_key(api_key):
    with ScriptedServer(lambda i, b: _answer_script("ok"), models=["m-one", "m-two"],
                        routes={"/props": {"default_generation_settings": {"n_ctx": 4096}}}) as server:
        ran = run_main(chat.main, ["--base-url", server.base_url, "-q"], prompts_jsonl(["x"]))
    run, turn = ran.records
    assert run["kind"] == "run" and run["model"] == "m-one"   # first listed model by default
    assert run["server"]["models"] == ["m-one", "m-two"]
    assert run["server"]["context_window"] == 4096
    assert run["params"]["temperature"] == 0.7 and run["params"]["max_tokens"] == 32768
    assert turn["turn"] == 1 and turn["status"] == "ok" and turn["content"] == "ok"
    assert turn["chunks"][-1][1] == "[DONE]"
    assert all(isinstance(c[0], float) for c in turn["chunks"])
    assert SECRET not in ran.out + ran.err


def test_stream_shapes_comments_keepalives_and_empty_deltas(api_key):
    raw = (b": keep-alive\n\n"
           b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
           b": ping\n\n"
           b'data: {"choices":[{"index":0,"delta":{}}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}\n\n'
           b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
           b"data: [DONE]\n\n")
    with ScriptedServer(lambda i, b: Script(events=[(0.05, raw)])) as server:
        ran, rows = chat_and_measure(server, ["x"])
    turn = ran.records[1]
    assert turn["content"] == "Hello"
    assert [c[1] for c in turn["chunks"]][0].startswith('{"choices":[{"index":0,"delta":{"role"')
    assert len(turn["chunks"]) == 6          # comments are not events
    assert rows[0]["finish_reason"] == "stop" and rows[0]["status"] == "ok"


def test_unreachable_server_is_one_line_and_exit_1(api_key):
    from lalmpipe.localserver import free_port
    ran = run_main(chat.main, ["--base-url", f"http://127.0.0.1:{free_port()}/v1", "--model", "m"],
                   prompts_jsonl(["x"]))
    assert ran.code == 1
    assert ran.err.startswith("lalm-chat: error: cannot reach the server at http://127.0.0.1:")
    assert ran.err.count("\n") == 1 and "Traceback" not in ran.err
    assert ran.out == ""
