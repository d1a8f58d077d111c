"""Faults injected by a scripted server: each becomes data, retried where it is
transient, and the run stops where the context broke."""
import json
import os
import time

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import chat, metrics, report, tokens
from lalmpipe.replay import Script
from scripted import ForkedServer, sse, stream


def ok(text="fine", prompt_tokens=None, completion=3):
    events = [(0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]})),
              (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))]
    if prompt_tokens is not None:
        events.append((0.021, json.dumps({"choices": [], "usage": {
            "prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}})))
    return sse(*events, (0.022, "[DONE]"))


def error_body(status, body, **headers):
    return Script(status=status, body=body.encode(), headers={"Content-Type": "application/json", **headers})


def converse(scripts, n, *args, **server_kw):
    with ForkedServer(lambda i, body: scripts[i] if i < len(scripts) else ok(), **server_kw) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, *args],     # the model the server lists
                       prompts_jsonl([f"question {i}" for i in range(1, n + 1)]))
        requests = srv.requests
    return ran, ran.records[1:], requests


def test_transient_5xx_is_retried_and_counted(api_key):
    ran, turns, reqs = converse([error_body(500, '{"error":"boom"}'), ok()], 1)
    assert ran.code == 0 and turns[0]["status"] == "ok" and turns[0]["attempts"] == 2
    assert len(reqs) == 2 and "retry 1" in ran.err


@pytest.mark.timing
def test_429_honours_retry_after(api_key):
    t0 = time.monotonic()
    ran, turns, _ = converse([error_body(429, '{"error":"slow down"}', **{"Retry-After": "0.6"}), ok()], 1)
    assert turns[0]["status"] == "ok" and turns[0]["attempts"] == 2
    assert time.monotonic() - t0 >= 0.6


def test_a_turn_that_still_fails_is_an_error_and_the_run_stops(api_key):
    scripts = [ok(), *[error_body(503, '{"error":"overloaded"}')] * 3]
    ran, turns, reqs = converse(scripts, 4, "--retries", "2")
    assert ran.code == 0
    assert [t["status"] for t in turns] == ["ok", "error"]
    assert turns[1]["attempts"] == 3 and turns[1]["http_status"] == 503
    assert turns[1]["error"]["kind"] == "http" and turns[1]["error"]["body"] == '{"error":"overloaded"}'
    assert "stopping at turn 2" in ran.err


@pytest.mark.parametrize("body", [
    '{"error":{"code":400,"message":"request (909 tokens) exceeds the available context size (512 tokens), '
    'try increasing it","type":"exceed_context_size_error","n_prompt_tokens":909,"n_ctx":512}}',
    '{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested '
    '5000 tokens (4000 in the messages, 1000 in the completion).","type":"BadRequestError","code":400}',
    '{"error":{"message":"...","type":"invalid_request_error","code":"context_length_exceeded"}}',
    '{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens"}}',
])
def test_overflow_bodies_of_each_server(api_key, body):
    ran, turns, _ = converse([ok(), error_body(400, body)], 3)
    assert [t["status"] for t in turns] == ["ok", "error"]
    assert turns[1]["error"]["kind"] == "context_overflow" and turns[1]["error"]["body"] == body
    assert turns[1]["attempts"] == 1
    assert "stopping at turn 2: context_overflow" in ran.err


def test_a_plain_400_is_not_an_overflow(api_key):
    _, turns, _ = converse([error_body(400, '{"error":{"message":"temperature must be <= 2"}}')], 1)
    assert turns[0]["error"] == {"kind": "http", "message": "temperature must be <= 2",
                                 "body": '{"error":{"message":"temperature must be <= 2"}}'}


def test_sse_error_events_under_200(api_key):
    overflow = sse((0.01, json.dumps({"error": {"message": "the context window is full (n_ctx 4096)"}})))
    other = sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": "par"}}]})),
                (0.02, json.dumps({"error": {"message": "model crashed"}})))
    _, turns, _ = converse([overflow], 1)
    assert turns[0]["http_status"] == 200 and turns[0]["error"]["kind"] == "context_overflow"
    _, turns, _ = converse([other], 1)
    assert turns[0]["error"]["kind"] == "stream" and turns[0]["error"]["message"] == "model crashed"
    assert len(turns[0]["chunks"]) == 2


def test_empty_200_and_a_cut_stream(api_key):
    _, turns, _ = converse([Script(events=[])], 1)
    assert turns[0]["error"]["kind"] == "empty" and turns[0]["http_status"] == 200
    cut = stream("plain", n_content=30, ttft_s=0.02, rate_tps=500)[0]
    cut.events, cut.end = cut.events[:10], "cut"
    _, turns, _ = converse([cut], 1)
    assert turns[0]["error"]["kind"] == "stream" and len(turns[0]["chunks"]) == 10


@pytest.mark.timing
def test_a_stall_ends_the_turn_with_timeout(api_key):
    stall = stream("plain", n_content=30, ttft_s=0.02, rate_tps=500)[0]
    stall.events = stall.events[:5] + [(5.0, stall.events[5][1])]
    t0 = time.monotonic()
    ran, turns, _ = converse([stall], 2, "--stall-timeout", "0.5")
    assert time.monotonic() - t0 < 4
    assert turns[0]["error"]["kind"] == "timeout" and len(turns[0]["chunks"]) == 5
    assert len(turns) == 1 and "stopping at turn 1: timeout" in ran.err


def test_whole_turn_timeout(api_key):
    slow = stream("plain", n_content=100, ttft_s=0.02, rate_tps=50)[0]
    _, turns, _ = converse([slow], 1, "--timeout", "0.4")
    assert turns[0]["error"]["kind"] == "timeout" and 10 <= len(turns[0]["chunks"]) <= 30


def test_reset_connection_is_retried(api_key):
    _, turns, reqs = converse([Script(end="reset"), ok()], 1)
    assert turns[0]["status"] == "ok" and turns[0]["attempts"] == 2 and len(reqs) == 2


def test_server_gone_mid_run_is_a_connection_error(api_key):
    def answer(i, body):
        if i == 1:
            os._exit(0)   # the server dies as turn 2 arrives: later connections are refused
        return ok()
    with ForkedServer(answer) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "--retries", "1"],
                       prompts_jsonl(["a", "b", "c"]))
    turns = ran.records[1:]
    assert [t["status"] for t in turns] == ["ok", "error"]
    assert turns[1]["error"]["kind"] == "connection"
    assert turns[1]["error"]["message"] == f"cannot connect to {srv.base_url}: connection refused"
    # the request the dying server never answered, its resend and one retry; the retry's notice
    # names the failure before it: the refused resend, or, when the server's end of the kept-alive
    # connection went only as the resend began, the reset
    assert turns[1]["attempts"] == 3
    assert (f"turn 2: cannot connect to {srv.base_url}: connection refused; retry 1 in 1 s" in ran.err
            or "turn 2: connection reset by peer; retry 1 in 1 s" in ran.err), ran.err


def test_continue_goes_on_after_an_error(api_key):
    ran, turns, reqs = converse([ok("one"), error_body(400, '{"error":"exceeds the available context size"}'),
                                 ok("three")], 3, "--on-error", "continue")
    assert [t["status"] for t in turns] == ["ok", "error", "ok"]
    # the failed prompt has no answer, so it is not part of the history sent next
    assert [m["content"] for m in reqs[2]["body"]["messages"]] == ["question 1", "one", "question 3"]


def measured(ran):
    m = run_main(metrics.main, [], ran.out)
    return [r for r in m.records if r["kind"] == "metrics"], m.out


def test_silent_truncation_is_flagged_and_is_the_ceiling(api_key):
    long = " ".join(["word"] * 80)
    scripts = [ok(long, 100, 80), ok(long, 280, 80), ok(long, 300, 80), ok(long, 300, 80)]
    with ForkedServer(lambda i, body: scripts[i]) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q"],
                       prompts_jsonl(["a question", "b question", "c question", "d question"]))
    rows, out = measured(ran)
    assert [r["truncated"] for r in rows] == [False, False, True, True]
    doc = json.loads(run_main(report.main, ["--format", "json"], out).out)
    assert doc["ceiling"] == {"turn": 3, "context_tokens": 380, "reason": "truncation",
                              "last_ok_context_tokens": 360, "over_window_tokens": None,
                              "overflow_tokens": None}
    text = run_main(report.main, [], out).out
    assert "Ceiling at turn 3: the server silently truncated the conversation at about 380" in text


def test_ollamas_cached_prompt_counts_are_not_truncation(api_key):
    # Ollama counts only what it did not have cached: 0, or about the new part
    long = " ".join(["word"] * 80)
    scripts = [ok(long, 100, 80), ok(long, 0, 80), ok(long, 95, 80), ok(long, 90, 80)]
    with ForkedServer(lambda i, body: scripts[i]) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q"],
                       prompts_jsonl(["a question", "b question", "c question", "d question"]))
    rows, out = measured(ran)
    assert [r["truncated"] for r in rows] == [False, False, False, False]
    assert [r["prompt_tokens_source"] for r in rows] == ["server", "server-uncached", "server-uncached",
                                                         "server-uncached"]
    est = [r["context_tokens_est"] for r in rows]
    # a partial count is no context size: the client's count stands in, marked as such
    assert [(r["context_tokens"], r["context_tokens_source"]) for r in rows] == [
        (180, "server"), (est[1], "estimate"), (est[2], "estimate"), (est[3], "estimate")]
    assert est == sorted(est) and est[0] > 80
    doc = json.loads(run_main(report.main, ["--format", "json"], out).out)
    assert doc["ceiling"] is None
    # the run's context figures are all the client's, never a mix
    assert doc["summary"]["context_source"] == "client (cl100k estimate)"
    assert doc["summary"]["max_context_tokens"] == est[-1]
    assert "client estimates" in run_main(report.main, [], out).out


def test_length_stop_with_the_window_full_is_an_overflow(api_key):
    full = sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": "x"}}]})),
               (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})),
               (0.03, json.dumps({"choices": [], "usage": {"prompt_tokens": 500, "completion_tokens": 12}})),
               (0.04, "[DONE]"))
    props = {"/props": {"default_generation_settings": {"n_ctx": 512}}}
    ran, turns, _ = converse([ok(), full], 3, routes=props)
    assert turns[1]["error"]["kind"] == "context_overflow"
    assert "512" in turns[1]["error"]["message"] and len(turns) == 2


def test_preflight_reads_each_servers_window(api_key):
    cases = [
        ({"/props": {"default_generation_settings": {"n_ctx": 2048}}}, 2048, "llama.cpp"),
        ({"/api/v0/models": {"data": [{"id": "scripted", "loaded_context_length": 8192,
                                       "max_context_length": 32768}]}}, 8192, "lm-studio"),
        ({"/api/show": {"model_info": {"llama.context_length": 131072},
                        "parameters": "num_ctx 4096\nstop x"}}, 4096, "ollama"),
    ]
    for routes, window, software in cases:
        ran, _, _ = converse([ok()], 1, routes=routes)
        server = ran.records[0]["server"]
        assert (server["context_window"], server["software"]) == (window, software)


def test_warns_when_the_conversation_will_not_fit(api_key):
    props = {"/props": {"default_generation_settings": {"n_ctx": 300}}}
    ran, _, _ = converse([ok()], 1, "--max-tokens", "512", routes=props)
    need = tokens.count("question 1")
    assert (f"lalm-chat: the context window is 300 tokens; the 1 prompt alone takes about {need} "
            "and each answer may add up to 512: expect the context to overflow\n") in ran.err
    ran, _, _ = converse([ok(), ok()], 2, "--max-tokens", "512", routes=props)
    assert f"the 2 prompts alone take about {2 * need} and each" in ran.err


@pytest.mark.timing
def test_timeout_bounds_the_wait_for_a_first_token(api_key):
    late = sse((3.0, json.dumps({"choices": [{"index": 0, "delta": {"content": "late"}}]})), (3.1, "[DONE]"))
    t0 = time.monotonic()
    _, turns, _ = converse([late], 1, "--timeout", "0.5")
    assert time.monotonic() - t0 < 2.5
    assert turns[0]["error"]["kind"] == "timeout" and turns[0]["chunks"] == []


def test_odd_chunks_are_data_not_a_crash(api_key):
    odd = sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Hi"}]}}]})),
              (0.02, json.dumps({"choices": ["x"]})),
              (0.03, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
              (0.04, "[DONE]"))
    ran, turns, reqs = converse([odd], 1)
    assert ran.code == 0 and turns[0]["status"] == "ok" and turns[0]["content"] == "Hi"
    assert reqs[0]["headers"]["accept-encoding"] == "identity"    # bytes as streamed, never gzip


def test_lalm_chat_passes_other_records_through(api_key):
    note = json.dumps({"kind": "note", "text": "from a user's script"})
    with ForkedServer(lambda i, b: ok()) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q"],
                       note + "\n" + prompts_jsonl(["a"]))
    assert [r["kind"] for r in ran.records] == ["run", "note", "turn"]


VLLM_OVERFLOW = ('{"object":"error","message":"This model\'s maximum context length is 512 tokens. However, your '
                 'request has at least 513 input tokens. Please reduce the length of the input messages.",'
                 '"type":"BadRequestError","param":null,"code":400}')
LLAMA_CPP_OVERFLOW = ('{"error":{"code":400,"message":"request (909 tokens) exceeds the available context size '
                      '(512 tokens), try increasing it","type":"exceed_context_size_error",'
                      '"n_prompt_tokens":909,"n_ctx":512}}')
# where each tells its window before the run
WINDOW_ROUTES = {"vllm": {path: {"data": [{"id": "m", "max_model_len": 512}]} for path in ("/v1/models", "/models")},
                 "llama.cpp": {"/props": {"default_generation_settings": {"n_ctx": 512}}}}


@pytest.mark.parametrize("usage", [True, False])
@pytest.mark.parametrize("window_known", [True, False])
@pytest.mark.parametrize("server, body, counted", [("vllm", VLLM_OVERFLOW, 513),
                                                   ("llama.cpp", LLAMA_CPP_OVERFLOW, 909)])
def test_an_overflow_is_over_the_window_by_the_servers_own_count(api_key, server, body, counted,
                                                                 window_known, usage):
    first = ok(" ".join(["word"] * 80), 400, 80) if usage else ok(" ".join(["word"] * 80))
    ran, turns, _ = converse([first, error_body(400, body)], 3,
                             routes=WINDOW_ROUTES[server] if window_known else None)
    assert ran.records[0]["server"]["context_window"] == (512 if window_known else None)
    rows, out = measured(ran)
    assert rows[1]["error_kind"] == "context_overflow" and rows[1]["overflow_tokens"] == counted
    doc = json.loads(run_main(report.main, ["--format", "json"], out).out)
    last_ok = 480 if usage else rows[0]["context_tokens_est"]
    assert doc["ceiling"] == {"turn": 2, "context_tokens": doc["ceiling"]["context_tokens"],
                              "reason": "context_overflow", "last_ok_context_tokens": last_ok,
                              "over_window_tokens": 512 if window_known else None, "overflow_tokens": counted}
    text = run_main(report.main, [], out).out
    sentence = next(line for line in text.splitlines() if line.startswith("Ceiling"))[13:]
    where = f"the server counted {counted} tokens" + (", over the 512-token window" if window_known else "")
    assert sentence == (f"Ceiling at turn 2: the request overflowed the context window: {where}; the last good "
                        f"turn held {last_ok} tokens" + ("." if usage else " (client estimates)."))


PING = b": ping - 2026-11-29 19:00:00.000000+00:00\r\n\r\n"


@pytest.mark.timing
@pytest.mark.parametrize("limit, message", [(("--stall-timeout", "0.5"), "no data event for 0.5 s"),
                                            (("--timeout", "0.5"), "turn took longer than --timeout 0.5 s")])
def test_keep_alive_comments_do_not_hide_a_stall(api_key, limit, message):
    # llama-cpp-python's pings go on while no data comes: the stall clock runs from the last data event
    stalled = stream("plain", n_content=30, ttft_s=0.02, rate_tps=500)[0]
    stalled.events = (stalled.events[:4] + [(0.1 + 0.2 * k, PING) for k in range(30)]
                      + [(6.2, e) for _, e in stalled.events[4:]])
    import openai  # noqa: F401 - loaded before the clock starts: its first import takes seconds on a busy machine
    t0 = time.monotonic()
    ran, turns, _ = converse([stalled], 2, *limit)
    elapsed = time.monotonic() - t0
    assert 0.5 < elapsed < 3.0, elapsed
    assert turns[0]["status"] == "error" and turns[0]["error"]["kind"] == "timeout"
    assert turns[0]["error"]["message"] == message
    assert len(turns[0]["chunks"]) == 4 and len(turns) == 1


@pytest.mark.timing
def test_keep_alive_comments_are_neither_tokens_nor_chunks(api_key):
    from scripted import llama_cpp_python
    pings = (0.05, 0.1, 0.15, 0.2, 0.25, 0.31, 0.45, 0.61)
    answer = llama_cpp_python(n_content=20, ttft_s=0.3, rate_tps=50, pings=pings)
    ran, turns, _ = converse([answer], 1, "--stall-timeout", "1")
    rows, _ = measured(ran)
    assert turns[0]["status"] == "ok" and turns[0]["content"] == ("cat " * 20).strip()
    # the role chunk, 20 tokens, the finish and [DONE]: no ping among them
    assert len(turns[0]["chunks"]) == 23 and not any("ping" in c[1] for c in turns[0]["chunks"])
    assert rows[0]["ttft_s"] == pytest.approx(0.3, abs=0.03)
    assert rows[0]["completion_tokens"] == 20 and rows[0]["decode_tps"] == pytest.approx(50, rel=0.1)
