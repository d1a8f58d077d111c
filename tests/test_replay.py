"""lalm-replay: a recording served back, byte-exact and on time."""
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgspec

import pytest

from conftest import ROOT, least_timing_errors, prompts_jsonl, run_main
from lalmpipe import chat, metrics
from lalmpipe.localserver import free_port
from lalmpipe.records import Run, Turn
from lalmpipe.replay import ReplayServer, Script, script_from_record
from scripted import FACTS, ForkedServer, scripted_model, stream

EXAMPLE = os.path.join(ROOT, "docs", "examples", "smollm2.jsonl")


def start_replay(recording, *args):
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "lalm-replay"), recording,
                             "--port", str(port), *args], stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert f"http://127.0.0.1:{port}/v1" in line, line
    return proc, f"http://127.0.0.1:{port}/v1"


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    proc.wait(10)
    return proc.returncode, proc.stderr.read()


def recorded(path):
    with open(path) as fp:
        recs = [json.loads(line) for line in fp]
    return recs[0], [r for r in recs if r["kind"] == "turn"]


def prompts_of(turns):
    return "".join(json.dumps({"kind": "prompt", "v": 1, **t["prompt"]}) + "\n" for t in turns)


def measure(text):
    return [r for r in run_main(metrics.main, [], text).records if r["kind"] == "metrics"]


@pytest.mark.timing
def test_round_trip_keeps_ttft_and_decode_speed(api_key):
    run, turns = recorded(EXAMPLE)
    with open(EXAMPLE) as fp:
        original = measure(fp.read())
    assert len(original) == len(turns) >= 5

    def replayed():
        proc, url = start_replay(EXAMPLE)
        try:
            again = run_main(chat.main, ["--base-url", url, "-q", "--max-tokens", "96"], prompts_of(turns))
        finally:
            code, err = stop(proc)
        assert again.code == 0, again.err
        assert code == 130 and "not the recorded prompt" not in err
        # the same events, byte-exact
        assert [[c[1] for c in t["chunks"]] for t in again.records[1:]] == [[c[1] for c in t["chunks"]] for t in turns]
        copy = measure(again.out)
        assert [(a["prompt_tokens"], a["completion_tokens"]) for a in original] == [
            (b["prompt_tokens"], b["completion_tokens"]) for b in copy]
        return {"ttft_ms": [abs(a["ttft_s"] - b["ttft_s"]) * 1000 for a, b in zip(original, copy)],
                "decode": [abs(b["decode_tps"] / a["decode_tps"] - 1) for a, b in zip(original, copy)]}

    def kept(errors):
        assert statistics.median(errors["ttft_ms"]) <= 1.0 and max(errors["ttft_ms"]) <= 5.0, errors
        assert max(errors["decode"]) <= 0.03, errors

    least_timing_errors(replayed, kept)


@pytest.mark.timing
def test_speed_zero_sends_at_once(api_key):
    run, turns = recorded(EXAMPLE)
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    try:
        with urllib.request.urlopen(url + "/models") as r:
            assert json.load(r)["data"][0]["id"] == run["model"]
        t0 = time.perf_counter()
        again = run_main(chat.main, ["--base-url", url, "-q"], prompts_of(turns))
        elapsed = time.perf_counter() - t0
    finally:
        stop(proc)
    assert again.code == 0 and elapsed < 1.0
    assert [t["content"] for t in again.records[1:]] == [t["content"] for t in turns]


def test_a_prompt_the_recording_does_not_hold_is_answered_404_naming_it(api_key):
    run, turns = recorded(EXAMPLE)
    unknown = "Which compressor settings would you pick for a dub techno bassline at 118 BPM?"
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    try:
        ask = urllib.request.Request(url + "/chat/completions", method="POST", data=json.dumps(
            {"model": "m", "stream": True, "messages": [{"role": "user", "content": unknown}]}).encode())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(ask)
        body = json.loads(refused.value.read())
        third = urllib.request.Request(url + "/chat/completions", method="POST", data=json.dumps(
            {"messages": [{"role": "user", "content": turns[2]["prompt"]["text"]}]}).encode())
        with pytest.raises(urllib.error.HTTPError) as out_of_place:
            urllib.request.urlopen(third)
        other = prompts_of(turns[:2]).replace(turns[1]["prompt"]["text"], unknown)
        again = run_main(chat.main, ["--base-url", url, "-q"], other)
    finally:
        code, err = stop(proc)
    named = f"no recorded turn answers the prompt '{unknown[:60]}…'"
    assert refused.value.code == 404 and body["error"]["message"] == named
    assert json.loads(out_of_place.value.read())["error"]["message"] == (
        f"no recorded turn answers the prompt '{turns[2]['prompt']['text'][:60]}…' "
        "after 0 earlier prompts (the recording asked it after 2)")
    assert again.code == 0, again.err
    t1, t2 = again.records[1:]
    assert t1["content"] == turns[0]["content"]
    assert (t2["status"], t2["http_status"], t2["error"]["kind"], t2["error"]["message"]) == (
        "error", 404, "http", named)
    assert f"lalm-replay: request 4: {named}\n" in err


def test_two_pipelines_in_a_row_get_the_same_answers(api_key):
    run, turns = recorded(EXAMPLE)
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    try:
        first, second = (run_main(chat.main, ["--base-url", url, "-q", "--max-tokens", "96"], prompts_of(turns))
                         for _ in range(2))
    finally:
        stop(proc)
    assert first.code == second.code == 0, second.err
    assert answers(first.out) == answers(second.out)
    assert [t["content"] for t in second.records[1:]] == [t["content"] for t in turns]


def test_a_resumed_run_gets_the_recorded_answers_of_the_turns_it_goes_on_with(api_key, tmp_path):
    with open(EXAMPLE) as fp:
        recording = fp.read()
    run, turns = recorded(EXAMPLE)
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    cut = tmp_path / "cut.jsonl"   # the run as lalm-chat left it, against this server, after turn 2
    cut.write_text("".join(json.dumps(r) + "\n" for r in [dict(run, base_url=url), *turns[:2]]))
    try:
        resumed = run_main(chat.main, ["--base-url", url, "-q", "--output", str(cut), "--resume"],
                           prompts_of(turns))
    finally:
        stop(proc)
    assert resumed.code == 0, resumed.err
    again = [r for r in map(json.loads, cut.read_text().splitlines()) if r["kind"] == "turn"]
    assert [(t["turn"], t["content"]) for t in again] == [(t["turn"], t["content"]) for t in turns]
    assert [(m["prompt_tokens"], m["truncated"]) for m in measure(cut.read_text())] == [
        (m["prompt_tokens"], m["truncated"]) for m in measure(recording)]


def test_a_turn_redone_after_an_interruption_replays_as_redone(api_key, tmp_path):
    run, turns = recorded(EXAMPLE)
    broken = dict(turns[1], status="interrupted", chunks=turns[1]["chunks"][:3], content="",
                  error={"kind": "interrupted", "message": "interrupted by the user", "body": None})
    rec = tmp_path / "resumed.jsonl"
    rec.write_text("".join(json.dumps(r) + "\n" for r in [run, turns[0], broken, dict(turns[1], turn=3)]))
    again, err = rerun(rec, ["-q"], prompts_of(turns[:2]), "--speed", "0")
    assert again.code == 0 and err == "lalm-replay: interrupted\n", err   # nothing said but the stop
    assert [(t["status"], t["content"]) for t in again.records[1:]] == [
        ("ok", turns[0]["content"]), ("ok", turns[1]["content"])]


def test_a_cold_run_with_markers_replays_in_step(api_key, tmp_path):
    argv = ["--model", "scripted", "-q", "--cold"]
    prompts = prompts_jsonl([f"prompt {i}" for i in range(1, 4)])
    with ForkedServer(scripted_model) as srv:
        first = run_main(chat.main, ["--base-url", srv.base_url, *argv], prompts)
    assert [t["marker"] for t in first.records[1:]] == [f"[{first.records[0]['run_id']}/{n}]\n" for n in (1, 2, 3)]
    recording = tmp_path / "cold.jsonl"
    recording.write_text(first.out)
    again, err = rerun(recording, argv, prompts, "--speed", "0")
    assert again.code == 0 and "no recorded turn" not in err, err
    assert answers(again.out) == answers(first.out)


SERVERS = {   # what lalm-chat's preflight learnt from each kind of server
    "llama.cpp": {"models": ["smollm2-135m"], "context_window": 8192, "context_source": "llama.cpp /props",
                  "software": "llama.cpp", "build": "b0-unknown", "total_slots": 4},
    "vllm": {"models": ["other", "smollm2-135m"], "context_window": 1024,
             "context_source": "/v1/models max_model_len", "software": "vllm"},
    "lm-studio": {"models": ["smollm2-135m"], "context_window": 4096, "context_source": "LM Studio /api/v0/models",
                  "software": "lm-studio", "max_context_length": 8192},
    "ollama": {"models": ["smollm2-135m"], "context_window": 2048, "context_source": "ollama /api/show num_ctx",
               "software": "ollama", "trained_context": 8192},
    "silent": {"models": ["smollm2-135m", "other"]},
}


@pytest.mark.parametrize("name", SERVERS)
def test_a_replayed_run_record_tells_the_recorded_server(api_key, tmp_path, name):
    run, turns = recorded(EXAMPLE)
    rec = tmp_path / "run.jsonl"
    rec.write_text("".join(json.dumps(r) + "\n" for r in [dict(run, server=SERVERS[name]), turns[0]]))
    again, _ = rerun(rec, ["-q", "--model", run["model"]], prompts_of(turns[:1]), "--speed", "0")
    assert again.code == 0, again.err
    told = Run.from_dict(again.records[0]).server
    assert msgspec.to_builtins(told) == msgspec.to_builtins(Run.from_dict(dict(run, server=SERVERS[name])).server)
    assert told.models == SERVERS[name]["models"]


def test_recorded_failures_replay_as_they_were(api_key, tmp_path):
    run, turns = recorded(EXAMPLE)
    cut = dict(turns[0], status="error", error={"kind": "stream", "message": "cut", "body": None},
               chunks=turns[0]["chunks"][:5])
    overflow = dict(turns[1], status="error", http_status=400, chunks=[],
                    error={"kind": "context_overflow", "message": "too long",
                           "body": '{"error":{"code":400,"message":"request (909 tokens) exceeds the '
                                   'available context size (512 tokens)","type":"exceed_context_size_error"}}'})
    rec = tmp_path / "faults.jsonl"
    rec.write_text("\n".join(json.dumps(r) for r in (run, cut, overflow)) + "\n")
    proc, url = start_replay(str(rec), "--speed", "0")
    try:
        again = run_main(chat.main, ["--base-url", url, "-q", "--on-error", "continue", "--retries", "0"],
                         prompts_of(turns[:2]))
    finally:
        stop(proc)
    t1, t2 = again.records[1:]
    assert t1["status"] == "error" and t1["error"]["kind"] == "stream"
    assert [c[1] for c in t1["chunks"]] == [c[1] for c in cut["chunks"]]
    assert t2["http_status"] == 400 and t2["error"]["kind"] == "context_overflow"
    assert t2["error"]["body"] == overflow["error"]["body"]


def test_replay_help_and_bad_recording(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "lalm-replay"), "--help"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "lalm-replay" in p.stdout and "--speed" in p.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind":"run","v":1,"run_id":"r","started_at":"t","tool":{},"base_url":"u","model":"m"}'
                   '\nnot json\n')
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "lalm-replay"), str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and p.stderr == f"lalm-replay: error: {bad}:2: invalid JSON\n"


def test_a_port_in_use_or_an_address_not_here_is_refused_in_one_line():
    def replay(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "bin", "lalm-replay"), EXAMPLE, *args],
                              capture_output=True, text=True, timeout=30)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = replay("--port", str(port))
    assert (in_use.returncode, in_use.stderr) == (
        1, f"lalm-replay: error: cannot listen on 127.0.0.1:{port}: address already in use\n")
    elsewhere = replay("--host", "192.0.2.1", "--port", "8800")    # TEST-NET-1: no machine's own
    assert (elsewhere.returncode, elsewhere.stderr) == (
        1, "lalm-replay: error: cannot listen on 192.0.2.1:8800: not an address of this machine\n")


def facts_file(path, doc=FACTS):
    path.write_text(json.dumps(doc))
    return str(path)


def rerun(recording, argv, prompts, *replay_args):
    """Run lalm-chat with `argv` against lalm-replay serving `recording`."""
    proc, url = start_replay(str(recording), *replay_args)
    try:
        again = run_main(chat.main, ["--base-url", url, *argv], prompts)
    finally:
        code, err = stop(proc)
    return again, err


def answers(out):
    """What a recording's requests got: kind, status, error kind, content, chunk texts."""
    return [(r["kind"], r["status"], (r["error"] or {}).get("kind"), r["content"], [c[1] for c in r["chunks"]])
            for r in map(json.loads, out.splitlines()) if r["kind"] in ("turn", "probe")]


def test_a_probed_run_replays_in_step(api_key, tmp_path):
    argv = ["--model", "scripted", "-q", "--probe-every", "2", "--facts", facts_file(tmp_path / "facts.json"),
            "--probe-max-tokens", "20"]
    prompts = prompts_jsonl([f"prompt {i}" for i in range(1, 7)])
    with ForkedServer(scripted_model) as srv:
        first = run_main(chat.main, ["--base-url", srv.base_url, *argv], prompts)
    recording = tmp_path / "probed.jsonl"
    recording.write_text(first.out)
    again, err = rerun(recording, argv, prompts, "--speed", "0")
    assert first.code == again.code == 0, again.err
    assert [a[0] for a in answers(first.out)].count("probe") == 6
    assert answers(again.out) == answers(first.out)
    assert "not the recorded" not in err and "is not the question" not in err

    def recalls(out):
        return [(r["after_turn"], r["fact_id"], r["answer"], r["correct"])
                for r in run_main(metrics.main, [], out).records if r["kind"] == "recall"]
    assert recalls(first.out) == [(2, "tempo", "92 BPM", True), (2, "bins", "128", True),
                                  (4, "tempo", "92 BPM", True), (4, "bins", "128", True),
                                  (6, "tempo", "I am not sure, 60 maybe.", False),
                                  (6, "bins", "I am not sure, 60 maybe.", False)]
    assert recalls(again.out) == recalls(first.out)


def test_a_probe_the_recording_does_not_hold_is_answered_404(api_key, tmp_path):
    with ForkedServer(scripted_model) as srv:
        first = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", "--probe-every", "1",
                                     "--facts", facts_file(tmp_path / "facts.json")], prompts_jsonl(["prompt 1"]))
    recording = tmp_path / "probed.jsonl"
    recording.write_text(first.out)
    other = dict(FACTS, facts=[dict(FACTS["facts"][0], question="What key?")])
    again, err = rerun(recording, ["--model", "scripted", "-q", "--probe-every", "1",
                                   "--facts", facts_file(tmp_path / "other.json", other)],
                       prompts_jsonl(["prompt 1"]), "--speed", "0")
    named = "no recorded turn answers the prompt 'What key?'"
    assert f"lalm-replay: request 2: {named}\n" in err
    assert answers(again.out)[0] == answers(first.out)[0]
    probes = [r for r in map(json.loads, again.out.splitlines()) if r["kind"] == "probe"]
    assert [(p["status"], p["http_status"], p["error"]["message"]) for p in probes] == [("error", 404, named)]


@pytest.mark.timing
def test_a_recorded_stall_replays_as_a_stall(api_key, tmp_path):
    stall = stream("plain", n_content=30, ttft_s=0.02, rate_tps=500)[0]
    stall.events = stall.events[:5] + [(30.0, stall.events[5][1])]
    argv = ["--model", "scripted", "-q", "--stall-timeout", "0.5"]
    prompts = prompts_jsonl(["first", "second"])
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0] if i == 0 else stall) as srv:
        first = run_main(chat.main, ["--base-url", srv.base_url, *argv], prompts)
    recording = tmp_path / "stalled.jsonl"
    recording.write_text(first.out)
    t0 = time.monotonic()
    again, _ = rerun(recording, argv, prompts)
    assert time.monotonic() - t0 < 5
    ((_, status, kind, _, texts),) = [a for a in answers(again.out) if a[1] != "ok"]
    assert (status, kind) == ("error", "timeout") and len(texts) == 5
    assert answers(again.out) == answers(first.out)


def test_a_timeout_replays_as_silence_and_a_lost_connection_as_a_reset():
    def turn(**fields):
        return Turn.from_dict({"kind": "turn", "v": 1, "run_id": "r", "turn": 1, "prompt": {"text": "q"},
                               "sent_at": "t", "status": "error", **fields})
    timeout = {"kind": "timeout", "message": "no bytes for 0.5 s", "body": None}
    before_headers = script_from_record(turn(http_status=None, error=timeout))
    assert (before_headers.status, before_headers.events, before_headers.end) == (None, [], "stall")
    mid_stream = script_from_record(turn(http_status=200, error=timeout, chunks=[[0.1, "{}"]]))
    assert (mid_stream.status, mid_stream.events, mid_stream.end) == (200, [(0.1, b"data: {}\n\n")], "stall")
    lost = {"kind": "connection", "message": "ConnectError", "body": None}
    assert script_from_record(turn(http_status=None, error=lost)).end == "reset"


@pytest.mark.timing
def test_a_stall_held_open_ends_with_the_server():
    server = ReplayServer(lambda i, b: Script(events=[(0, b"data: {}\n\n")], end="stall"), model="m")
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    with socket.create_connection(server.server_address, timeout=0.3) as client:
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        got = b""
        while b"data: {}" not in got:
            got += client.recv(4096)
        with pytest.raises(socket.timeout):       # held open, silent
            client.recv(4096)
        t0 = time.monotonic()
        server.shutdown()
        server.server_close()
        assert time.monotonic() - t0 < 0.5
        client.settimeout(2)
        assert client.recv(4096) == b""            # the held connection is let go


def test_ctrl_c_exits_130_without_a_traceback():
    proc, _ = start_replay(EXAMPLE)
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    err = proc.stderr.read()
    assert proc.returncode == 130 and err == "lalm-replay: interrupted\n"
