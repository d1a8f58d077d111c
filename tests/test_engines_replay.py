"""Real engines' bytes in the fast suite: each engine's recorded run
(tests/fixtures/engines/ENGINE.jsonl, written by make record-engines: four
turns of SmolLM2-135M and a fifth far longer than a 1,024-token window)
served again by lalm-replay, asked again by lalm-chat and measured by
lalm-metrics, as the live run was. No engine is needed."""
import functools
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from conftest import ROOT, Measured, prompts_jsonl, run_main
from lalmpipe import chat, metrics
from lalmpipe.localserver import free_port
from lalmpipe.replay import ReplayServer, Script

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "engines")
ENGINES = ["llama.cpp", "vllm", "llama-cpp-python", "transformers"]
SPEED = 8            # replayed eight times faster than recorded
WINDOW_TOKENS = 1024  # the window the engines that take one were given


def replayed(recording_path: str, recorded: Measured) -> Measured:
    """lalm-replay serving the recording; lalm-chat asking its prompts again with its settings."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "lalm-replay"), recording_path,
                             "--port", str(port), "--speed", str(SPEED)], stderr=subprocess.PIPE, text=True)
    try:
        assert f"http://127.0.0.1:{port}/v1" in proc.stderr.readline()
        prompts = "".join(json.dumps({"kind": "prompt", "v": 2, **t["prompt"]}) + "\n" for t in recorded.turns)
        params = recorded.run["params"]
        c = run_main(chat.main, ["--base-url", f"http://127.0.0.1:{port}/v1", "-q",
                                 "--max-tokens", str(params["max_tokens"]),
                                 "--temperature", str(params["temperature"])], prompts)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert c.code == 0, c.err
    return Measured(c.out)


@functools.lru_cache(maxsize=None)
def replay_of(name: str) -> tuple[Measured, Measured]:
    """The engine's recording measured, and its replay measured (once per engine)."""
    path = os.path.join(FIXTURES, f"{name}.jsonl")
    with open(path) as fp:
        recorded = Measured(fp.read())
    return recorded, replayed(path, recorded)


def events(turn):
    return [json.loads(c[1]) for c in turn["chunks"] if c[1] != "[DONE]"]


@pytest.mark.timing
@pytest.mark.parametrize("name", ENGINES)
def test_a_replayed_engine_run_measures_as_recorded(name):
    recorded, again = replay_of(name)
    same = ("status", "error_kind", "finish_reason", "prompt_tokens", "completion_tokens", "context_tokens")
    assert [[r[k] for k in same] for r in again.rows] == [[r[k] for k in same] for r in recorded.rows]
    assert len(again.rows) == 5
    for r, was in zip(again.rows[:4], recorded.rows):
        assert r["ttft_s"] == pytest.approx(was["ttft_s"] / SPEED, abs=0.05)


@pytest.mark.parametrize("name", ENGINES)
def test_usage_is_read_where_the_engine_puts_it(name):
    recorded, again = replay_of(name)
    for turn, row in zip(recorded.turns[:4], again.rows):
        with_usage = [e for e in events(turn) if e.get("usage")]
        if name == "llama-cpp-python":   # include_usage ignored
            assert with_usage == []
            continue
        chunk, = with_usage
        u = chunk["usage"]
        # vLLM and llama.cpp: a last chunk of its own; transformers: on the finish chunk
        finish = [c.get("finish_reason") for c in chunk["choices"]]
        assert finish == [] if name in ("vllm", "llama.cpp") else finish[0] in ("stop", "length")
        assert (row["prompt_tokens"], row["completion_tokens"]) == (u["prompt_tokens"], u["completion_tokens"])
        assert row["prompt_tokens_source"] == "server"


def test_without_usage_the_counts_are_the_clients_estimates():
    recorded, again = replay_of("llama-cpp-python")
    for row in again.rows[:4]:
        assert row["context_tokens"] == row["context_tokens_est"] > row["prompt_tokens"] > 0
        assert (row["prompt_tokens_source"], row["context_tokens_source"]) == ("estimate", "estimate")
    # the text report stands on them: context sizes marked as estimates, a slope, the largest
    assert f"≈ {again.rows[3]['context_tokens']}" in again.text
    assert f"largest context ≈ {max(r['context_tokens'] for r in again.rows):,} tokens" in again.text
    assert "s per 1,000 context tokens" in again.text and "?" not in again.text


@pytest.mark.timing
@pytest.mark.parametrize("name", ENGINES)
def test_the_end_of_a_stream_with_no_done_is_its_close(name):
    recorded, again = replay_of(name)
    done = [t["chunks"][-1][1] == "[DONE]" for t in recorded.turns[:4]]
    assert done == [name != "transformers"] * 4
    assert all(r["finish_reason"] in ("stop", "length") for r in again.rows[:4])
    for turn, row in zip(recorded.turns[:4], again.rows):
        last_event = turn["chunks"][-1][0] if name == "transformers" else turn["chunks"][-2][0]
        assert row["e2e_s"] == pytest.approx(last_event / SPEED, abs=0.05)


@pytest.mark.timing
@pytest.mark.parametrize("name", ENGINES)
def test_a_role_chunk_is_not_the_first_token(name):
    recorded, again = replay_of(name)
    for turn, row in zip(recorded.turns[:4], again.rows):
        first = events(turn)[0]["choices"][0]["delta"]
        assert first.get("role") == "assistant" and not first.get("content")
        first_token_s = next(c[0] for c in turn["chunks"] if c[1] != "[DONE]"
                             and any(ch["delta"].get("content") for ch in json.loads(c[1])["choices"]))
        assert row["ttft_s"] == pytest.approx(first_token_s / SPEED, abs=0.03)
        if name == "transformers":   # its role chunk comes at once, before the prefill
            assert turn["chunks"][0][0] < 0.05 < first_token_s


@pytest.mark.parametrize("name", ENGINES)
def test_each_engines_overflow_is_classified(name):
    recorded, again = replay_of(name)
    last = again.rows[-1]
    kind = {"llama.cpp": "context_overflow", "vllm": "context_overflow", "llama-cpp-python": "empty"}.get(name)
    if kind is None:   # transformers enforces no window: the long turn is answered
        assert last["status"] == "ok" and last["prompt_tokens"] > WINDOW_TOKENS
        assert again.report["ceiling"] is None and recorded.report["ceiling"] is None
        return
    assert (last["status"], last["error_kind"]) == ("error", kind)
    assert again.report["ceiling"]["reason"] == kind and again.report["ceiling"]["turn"] == 5


@pytest.mark.parametrize("name", ["llama.cpp", "vllm"])
def test_an_overflow_of_a_known_window_is_over_that_window(name):
    with open(os.path.join(FIXTURES, f"{name}.jsonl")) as fp:
        recorded = Measured(fp.read())
    assert recorded.run["server"]["context_window"] == WINDOW_TOKENS
    assert recorded.rows[-1]["overflow_tokens"] > WINDOW_TOKENS
    assert "over the 1,024-token window" in recorded.text


@pytest.mark.timing
def test_ping_comments_during_a_long_prefill_are_not_events(api_key):
    """llama-cpp-python's answer to a long prompt, line by line as it came
    (tests/fixtures/engines/llama-cpp-python-ping.json), served again at its times."""
    with open(os.path.join(FIXTURES, "llama-cpp-python-ping.json")) as fp:
        lines = json.load(fp)["lines"]
    pings = [t for t, line in lines if line.startswith(": ping")]
    data = [(t, line) for t, line in lines if line.startswith("data: ")]
    assert pings and pings[0] < data[0][0]
    server = ReplayServer(lambda i, body: Script(events=[(t, line.encode()) for t, line in lines]),
                          model="smollm2-135m", speed=SPEED)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        c = run_main(chat.main, ["--base-url", server.base_url, "-q", "--max-tokens", "8"],
                     prompts_jsonl(["A long document, then a question."]))
    finally:
        server.shutdown()
        server.server_close()
    assert c.code == 0, c.err
    turn = [r for r in c.records if r["kind"] == "turn"][0]
    row, = [r for r in run_main(metrics.main, [], c.out).records if r["kind"] == "metrics"]
    assert turn["status"] == "ok" and [c[1] for c in turn["chunks"]] == [line[6:].rstrip("\r\n") for _, line in data]
    first_token_s = next(t for t, line in data if line[6:].strip() != "[DONE]"
                         and any(ch["delta"].get("content") for ch in json.loads(line[6:])["choices"]))
    # the first token: not a comment, nor the role chunk just before it
    assert row["ttft_s"] == pytest.approx(first_token_s / SPEED, abs=0.05)
