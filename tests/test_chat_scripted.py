"""lalm-chat and lalm-metrics against a scripted SSE server on 127.0.0.1 whose
schedule and counts are the truth."""
import csv
import io
import json
import re

import pytest

from conftest import SECRET, least_timing_errors, prompts_jsonl, run_main
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


@pytest.mark.timing
@pytest.mark.parametrize("dialect", DIALECTS)
def test_metrics_match_the_schedule_in_every_dialect(dialect, api_key):
    def run():
        made = [stream(dialect, n_reasoning=30, n_content=40, ttft_s=TTFTS[i], rate_tps=100.0,
                       prompt_tokens=50 + 100 * i, cached=40 * i) for i in range(3)]
        truths = [truth for _, truth in made]
        with ScriptedServer(lambda i, body: made[i][0]) as server:
            _, rows = chat_and_measure(server, ["first question", "second", "third"])
        assert len(rows) == 3
        for row, truth in zip(rows, truths):
            assert row["status"] == "ok"
            assert abs(row["reasoning_tokens"] - truth.reasoning_tokens) <= 2
            assert abs(row["content_tokens"] - truth.content_tokens) <= 2
            assert row["has_reasoning"] is (truth.reasoning_tokens > 0)
            if dialect == "no_usage":
                # the client's own counts, each marked as such
                assert (row["prompt_tokens_source"], row["context_tokens_source"], row["tokens_source"]) == (
                    "estimate", "estimate", "tiktoken")
                assert row["completion_tokens"] == row["content_tokens"]
                assert row["context_tokens"] == row["context_tokens_est"] \
                    == row["prompt_tokens"] + row["completion_tokens"]
            else:
                assert row["prompt_tokens"] == truth.prompt_tokens
                assert row["completion_tokens"] == truth.completion_tokens
                assert row["context_tokens"] == truth.prompt_tokens + truth.completion_tokens
                assert row["cached_tokens"] == 40 * (row["turn"] - 1)
                assert row["tokens_source"] == ("server" if dialect == "vllm" else "server+tiktoken")
            assert (row["reasoning_s"] is None) is (truth.reasoning_tokens == 0)
        if dialect == "reasoning_content":
            assert rows[1]["server_timings"]["cache_n"] == 40
        # 30 reasoning chunks at 100/s (+2 tag chunks inline): 0.29 s, or 0.32 s
        reasoning_s = 0.29 if dialect != "think_inline" else 0.32
        return {
            "ttft_ms": [abs(row["ttft_s"] - truth.ttft_s) * 1000 for row, truth in zip(rows, truths)],
            "content_ms": [abs(row["ttft_content_s"] - truth.ttft_content_s) * 1000
                           for row, truth in zip(rows, truths)],
            "decode": [abs(row["decode_tps"] / truth.rate_tps - 1) for row, truth in zip(rows, truths)],
            "reasoning_ms": [abs(row["reasoning_s"] - reasoning_s) * 1000 for row in rows if row["reasoning_s"]],
            "prefill": [abs(rows[1]["prefill_tps"] * TTFTS[1] / (150 - 40) - 1)]
            if dialect == "reasoning_content" else [],
        }

    def on_schedule(errors):
        assert max(errors["ttft_ms"] + errors["content_ms"]) <= 5.0, errors
        assert max(errors["decode"] + errors["prefill"]) <= 0.03, errors
        assert max(errors["reasoning_ms"], default=0) <= 6.0, errors

    least_timing_errors(run, on_schedule)


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
    assert ran.err.startswith("lalm-chat: error: cannot connect to http://127.0.0.1:")
    assert ran.err.count("\n") == 1 and "Traceback" not in ran.err
    assert ran.out == ""


@pytest.mark.timing
def test_a_server_without_usage_gets_a_whole_report_on_the_clients_counts(api_key, tmp_path):
    # llama-cpp-python's bytes: no usage chunk; decode slows to below half speed; then the
    # empty 200 with which it answers a prompt over its window
    import msgspec

    from lalmpipe import report, tokens
    from lalmpipe.render import plot
    from lalmpipe.results import load
    from scripted import llama_cpp_python
    rates = (200.0, 200.0, 180.0, 50.0)
    scripts = [llama_cpp_python(n_content=10 + 5 * i, ttft_s=0.05 * (i + 1), rate_tps=r)
               for i, r in enumerate(rates)] + [Script(events=[])]
    with ScriptedServer(lambda i, body: scripts[i]) as server:
        ran = run_main(chat.main, ["--base-url", server.base_url, "--model", "scripted", "-q"],
                       prompts_jsonl([f"question number {i}" for i in range(1, 6)]))
    measured = run_main(metrics.main, [], ran.out)
    rows = [r for r in measured.records if r["kind"] == "metrics"]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["error"] and rows[4]["error_kind"] == "empty"
    est = [r["context_tokens_est"] for r in rows]
    assert est == sorted(est) and est[0] > 10
    for i, r in enumerate(rows):
        assert (r["context_tokens"], r["context_tokens_source"]) == (est[i], "estimate")
        answer = 10 + 5 * i if i < 4 else 0      # one cl100k token a chunk
        assert (r["completion_tokens"], r["content_tokens"], r["tokens_source"]) == (answer, answer, "tiktoken")
        assert (r["prompt_tokens"], r["prompt_tokens_source"]) == (est[i] - answer, "estimate")
    # the client's count of the request equals the history it sent
    assert rows[1]["prompt_tokens"] == rows[0]["context_tokens"] + tokens.count("question number 2")

    def rep(*args):
        done = run_main(report.main, list(args), measured.out)
        assert done.code == 0, done.err
        return done.out

    doc = json.loads(rep("--format", "json"))
    s = doc["summary"]
    assert s["context_source"] == "client (cl100k estimate)"
    assert s["max_context_tokens"] == est[4] and s["decode_half_speed_at_context_tokens"] == est[3]
    assert s["ttft_slope_s_per_1k_tokens"] > 0
    assert s["prompt_tokens_total"] == sum(r["prompt_tokens"] for r in rows)
    assert doc["ceiling"] == {"turn": 5, "context_tokens": est[4], "reason": "empty",
                              "last_ok_context_tokens": est[3], "over_window_tokens": None,
                              "overflow_tokens": None}
    assert [(t["context_tokens"], t["context_tokens_source"]) for t in doc["turns"]] == [
        (e, "estimate") for e in est]
    typed = load(doc)
    xs, ys = plot._points(typed.turns, "ttft_s")           # the plot's x axis
    assert xs == est[:4] and len(ys) == 4
    assert plot.context_label([typed]) == "context tokens (prompt + completion, client cl100k estimates)"
    counted = msgspec.structs.replace(typed, summary=msgspec.structs.replace(typed.summary, context_source="server"))
    assert plot.context_label([counted]) == "context tokens (prompt + completion)"
    assert plot.context_label([counted, typed]).endswith(
        ", client cl100k estimates for the runs the server did not count)")

    text = rep()
    assert "?" not in text
    for i, e in enumerate(est, 1):
        assert re.search(rf"^ +{i} +foundations +(ok|empty) +≈ {e} ", text, re.M), (i, e, text)
    assert f"; largest context ≈ {est[4]:,} tokens" in text
    assert f"below half speed from ≈ {est[3]:,} context tokens" in text
    assert " s per 1,000 context tokens" in text
    assert (f"Ceiling at turn 5: the server answered with an empty stream at about {est[4]:,} context "
            f"tokens; the last good turn held {est[3]:,} tokens (client estimates).") in text
    md = rep("--format", "markdown")
    assert f"| 1 | foundations | ok | ≈ {est[0]} | " in md and "?" not in md
    table = list(csv.DictReader(io.StringIO(rep("--format", "csv"))))
    assert [(int(r["context_tokens"]), r["context_tokens_source"], r["prompt_tokens_source"])
            for r in table] == [(e, "estimate", "estimate") for e in est]
