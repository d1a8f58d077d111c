"""lalm-replay: a recording served back, byte-exact and on time."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT, run_main
from lalmpipe import chat, metrics
from lalmpipe.localserver import free_port

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


def test_round_trip_keeps_ttft_and_decode_speed(api_key):
    run, turns = recorded(EXAMPLE)
    proc, url = start_replay(EXAMPLE)
    try:
        again = run_main(chat.main, ["--base-url", url, "-q", "--max-tokens", "96"], prompts_of(turns))
    finally:
        code, err = stop(proc)
    assert again.code == 0, again.err
    assert code == 0 and "not the recorded prompt" not in err
    replayed = again.records[1:]
    # the same events, byte-exact
    assert [[c[1] for c in t["chunks"]] for t in replayed] == [[c[1] for c in t["chunks"]] for t in turns]
    with open(EXAMPLE) as fp:
        original = measure(fp.read())
    copy = measure(again.out)
    assert len(copy) == len(original) == len(turns) >= 5
    for a, b in zip(original, copy):
        assert abs(a["ttft_s"] - b["ttft_s"]) <= 0.003, (a["turn"], a["ttft_s"], b["ttft_s"])
        assert b["decode_tps"] == pytest.approx(a["decode_tps"], rel=0.03)
        assert (a["prompt_tokens"], a["completion_tokens"]) == (b["prompt_tokens"], b["completion_tokens"])


def test_speed_zero_sends_at_once_and_mismatches_are_said(api_key, tmp_path):
    run, turns = recorded(EXAMPLE)
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    try:
        with urllib.request.urlopen(url + "/models") as r:
            assert json.load(r)["data"][0]["id"] == run["model"]
        t0 = time.perf_counter()
        other = prompts_of(turns[:2]).replace(turns[1]["prompt"]["text"], "something else")
        again = run_main(chat.main, ["--base-url", url, "-q"], other)
        elapsed = time.perf_counter() - t0
    finally:
        code, err = stop(proc)
    assert again.code == 0 and elapsed < 1.0
    assert "request 2: last user message is not the recorded prompt" in err
    assert again.records[2]["content"] == turns[1]["content"]


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
