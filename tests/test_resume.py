"""Nothing lost: --output keeps every finished turn on disk; kill -9, SIGTERM and
--resume leave one successful turn per prompt, in order, with the full history."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, prompts_jsonl, run_main
from lalmpipe import chat, metrics
from lalmpipe.reasoning import read_stream
from lalmpipe.replay import Script
from scripted import ForkedServer, deltas_script, stream

PROMPTS = [f"question number {i}" for i in range(1, 7)]


def slow_answer(i, body):
    return stream("plain", n_content=20, ttft_s=0.05, rate_tps=40)[0]   # about 0.55 s a turn


def start_chat(url, output, *args):
    env = dict(os.environ, OPENAI_API_KEY="sk-secret-resume")
    prompts = output.parent / "prompts.jsonl"
    prompts.write_text(prompts_jsonl(PROMPTS))
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "bin", "lalm-chat"), "--base-url", url,
                             "--model", "scripted", "--output", str(output), *args, str(prompts)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)


def lines(path):
    with open(path) as fp:
        return [json.loads(line) for line in fp if line.strip()]


def written_turns(path) -> int:
    """The turns a running lalm-chat has written whole: a long record may be caught
    half-written (a line longer than the file buffer goes out in several writes)."""
    if not os.path.exists(path):
        return 0
    with open(path) as fp:
        return sum(1 for line in fp if line.endswith("\n") and json.loads(line)["kind"] == "turn")


def wait_for_turns(path, n, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if written_turns(path) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path}: fewer than {n} turns after {timeout} s")


def check_complete(path, requests):
    recs = lines(path)
    assert recs[0]["kind"] == "run" and sum(r["kind"] == "run" for r in recs) == 1
    ok = [r for r in recs if r["kind"] == "turn" and r["status"] == "ok"]
    assert [t["prompt"]["id"] for t in ok] == list(range(1, 7))
    numbers = [r["turn"] for r in recs if r["kind"] == "turn"]
    assert numbers == list(range(1, len(numbers) + 1))      # unique, an interrupted turn's too
    # the last request carried the whole history: five questions with their answers
    last = requests[-1]["body"]["messages"]
    assert [m["content"] for m in last if m["role"] == "user"] == PROMPTS
    assert [m["content"] for m in last if m["role"] == "assistant"] == [
        read_stream(t["chunks"]).raw_content for t in ok[:5]]
    return recs


def test_kill_9_then_resume(tmp_path):
    out = tmp_path / "run.jsonl"
    with ForkedServer(slow_answer) as srv:
        proc = start_chat(srv.base_url, out)
        wait_for_turns(out, 2)
        proc.kill()
        proc.wait()
        kept = lines(out)
        assert [r["turn"] for r in kept[1:]] == list(range(1, len(kept)))
        resumed = start_chat(srv.base_url, out, "--resume")
        stdout, stderr = resumed.communicate(timeout=60)
        requests = srv.requests
    assert resumed.returncode == 0, stderr
    assert "resuming run" in stderr
    recs = check_complete(out, requests)
    assert recs[:len(kept)] == kept                       # what was written stays as it was
    assert all(r["status"] == "ok" for r in recs[1:])
    assert "sk-secret-resume" not in open(out).read() + stdout + stderr


def test_sigterm_writes_the_turn_in_flight_then_resume_redoes_it(tmp_path):
    out = tmp_path / "run.jsonl"
    with ForkedServer(slow_answer) as srv:
        proc = start_chat(srv.base_url, out)
        wait_for_turns(out, 2)
        time.sleep(0.3)                                      # in the middle of turn 3
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130
        cut = lines(out)[-1]
        assert cut["status"] == "interrupted" and cut["error"]["kind"] == "interrupted"
        assert cut["turn"] == 3 and 0 < len(cut["chunks"]) < 23
        assert json.loads(stdout.splitlines()[-1]) == cut       # stdout got it too
        resumed = start_chat(srv.base_url, out, "--resume")
        _, stderr = resumed.communicate(timeout=60)
        requests = srv.requests
    assert resumed.returncode == 0, stderr
    recs = check_complete(out, requests)
    assert [r["status"] for r in recs[1:]] == ["ok", "ok", "interrupted", "ok", "ok", "ok", "ok"]


def test_resume_drops_a_half_written_line_and_refuses_to_overwrite(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        first = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q",
                                     "--output", str(out), "--num-rounds", "2"], prompts_jsonl(PROMPTS))
        assert first.code == 0
        again = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "--output", str(out)],
                         prompts_jsonl(PROMPTS))
        assert again.code == 1 and "already holds a run; use --resume" in again.err
        with open(out, "a") as fp:
            fp.write('{"kind":"turn","v":1,"run_id":')          # a kill in the middle of a write
        resumed = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "--output", str(out),
                                       "--resume"], prompts_jsonl(PROMPTS))
        requests = srv.requests
    assert resumed.code == 0, resumed.err
    assert "dropped a half-written last line" in resumed.err
    check_complete(out, requests)


def test_a_file_whose_first_line_was_cut_short_is_resumed_as_an_empty_run(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    out.write_text('{"kind":"run","v":2,"run_id":"5e')        # killed while writing the run record
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        args = ["--base-url", srv.base_url, "--model", "scripted", "--output", str(out)]
        again = run_main(chat.main, args, prompts_jsonl(PROMPTS))
        assert again.code == 1 and "already holds a run; use --resume" in again.err
        assert out.read_text() == '{"kind":"run","v":2,"run_id":"5e'
        resumed = run_main(chat.main, args + ["--resume"], prompts_jsonl(PROMPTS))
        requests = srv.requests
    assert resumed.code == 0, resumed.err
    assert resumed.err.splitlines()[0] == (f"lalm-chat: {out}: only a half-written first line (32 bytes), "
                                           "no run record: the run starts afresh")
    check_complete(out, requests)
    assert resumed.out == out.read_text()


def test_output_keeps_every_turn_when_stdout_closes(tmp_path):
    out = tmp_path / "run.jsonl"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompts_jsonl(PROMPTS))
    with ForkedServer(lambda i, b: stream("plain", n_content=400, ttft_s=0.01, rate_tps=20000)[0]) as srv:
        p = subprocess.run(f"{sys.executable} {ROOT}/bin/lalm-chat --base-url {srv.base_url} --model scripted "
                           f"--output {out} {prompts} | head -c 100", shell=True, capture_output=True,
                           text=True, timeout=60)
    assert p.returncode == 0
    assert "stdout was closed; the run goes on into" in p.stderr
    ok = [r for r in lines(out) if r["kind"] == "turn" and r["status"] == "ok"]
    assert len(ok) == len(PROMPTS)


def test_resume_says_how_far_the_run_went(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        args = ["--base-url", srv.base_url, "--output", str(out)]
        assert run_main(chat.main, args + ["-q", "--num-rounds", "1"], prompts_jsonl(PROMPTS)).code == 0
        one = run_main(chat.main, args + ["--resume", "--num-rounds", "2"], prompts_jsonl(PROMPTS))
        more = run_main(chat.main, args + ["--resume"], prompts_jsonl(PROMPTS))
    run_id = one.records[0]["run_id"]
    assert f"lalm-chat: resuming run {run_id}: 1 prompt answered, 1 to go, from turn 2\n" in one.err
    assert f"lalm-chat: resuming run {run_id}: 2 prompts answered, 4 to go, from turn 3\n" in more.err


def test_resume_keeps_a_whole_last_line_and_never_touches_a_file_it_cannot_read(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        args = ["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out)]
        assert run_main(chat.main, args + ["--num-rounds", "2"], prompts_jsonl(PROMPTS)).code == 0
        out.write_bytes(out.read_bytes().rstrip(b"\n"))      # the last turn lost only its newline
        resumed = run_main(chat.main, args + ["--resume"], prompts_jsonl(PROMPTS))
        requests = srv.requests
    assert resumed.code == 0 and "dropped" not in resumed.err
    check_complete(out, requests)
    assert len(requests) == 6                               # turn 2 was not asked again
    notes = tmp_path / "notes.json"
    notes.write_text('{"a": 1}\n{"b"')
    ran = run_main(chat.main, ["--base-url", "http://127.0.0.1:9/v1", "--output", str(notes), "--resume"],
                   prompts_jsonl(PROMPTS))
    assert ran.code == 1 and "not a lalmpipe record" in ran.err
    assert notes.read_text() == '{"a": 1}\n{"b"'


def test_resume_sends_what_the_run_recorded_not_todays_flags(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        first = ["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out)]
        run_main(chat.main, first + ["--num-rounds", "2", "--system", "Answer in French.",
                                     "--temperature", "0", "--extra-body", '{"top_k": 5}'],
                 prompts_jsonl(PROMPTS))
        resumed = run_main(chat.main, first + ["--resume"], prompts_jsonl(PROMPTS))
        requests = srv.requests
    assert resumed.code == 0, resumed.err
    later = requests[2]["body"]
    assert later["messages"][0] == {"role": "system", "content": "Answer in French."}
    assert later["temperature"] == 0 and later["top_k"] == 5
    check = [m["content"] for m in requests[-1]["body"]["messages"] if m["role"] == "user"]
    assert check == PROMPTS


def test_resume_in_a_pipeline_gives_the_metrics_of_the_file(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    answers = [stream("plain", n_content=5 + i, ttft_s=0.01, prompt_tokens=40 * (i + 1))[0] for i in range(6)]
    with ForkedServer(lambda i, b: answers[i]) as srv:
        args = ["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out)]
        first = run_main(chat.main, args + ["--num-rounds", "2"], prompts_jsonl(PROMPTS))
        piped = run_main(chat.main, args + ["--resume"], prompts_jsonl(PROMPTS))
    assert first.code == 0 and piped.code == 0, piped.err
    from_pipe = run_main(metrics.main, [], piped.out).records
    from_file = run_main(metrics.main, [str(out)]).records
    assert [r["turn"] for r in from_pipe if r["kind"] == "metrics"] == [1, 2, 3, 4, 5, 6]
    assert from_pipe == from_file
    assert from_pipe[3]["conversation_tokens"] > from_pipe[2]["conversation_tokens"] > 0


@pytest.mark.parametrize("change, message", [
    (["--model", "other"], "--resume: the run was with model 'scripted', not 'other'"),
    (["--prompt-text"], "--resume: prompt 2 differs from the one turn 2 answered"),
])
def test_resume_refuses_another_model_or_prompts(tmp_path, api_key, change, message):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        args = ["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out)]
        assert run_main(chat.main, args + ["--num-rounds", "2"], prompts_jsonl(PROMPTS)).code == 0
        before = out.read_text()
        texts = PROMPTS[:1] + ["another question"] + PROMPTS[2:] if change == ["--prompt-text"] else PROMPTS
        argv = args + ["--resume"] + ([] if change == ["--prompt-text"] else change)
        ran = run_main(chat.main, argv, prompts_jsonl(texts))
        sent = len(srv.requests)
    assert ran.code == 2 and ran.err.startswith(f"lalm-chat: error: {message}"), ran.err
    assert ran.err.count("\n") == 1 and ran.out == "" and sent == 2
    assert out.read_text() == before


def test_resume_goes_on_against_a_new_url_that_serves_the_same_model(tmp_path, api_key):
    # make server listens on a new port each time: a restarted server has another URL
    out = tmp_path / "run.jsonl"
    answer = lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]     # noqa: E731
    with ForkedServer(answer) as first:
        args = ["-q", "--output", str(out)]
        assert run_main(chat.main, ["--base-url", first.base_url, *args, "--num-rounds", "2"],
                        prompts_jsonl(PROMPTS)).code == 0
    with ForkedServer(answer, models=["another-model"]) as other:
        before = out.read_bytes()
        refused = run_main(chat.main, ["--base-url", other.base_url, *args, "--resume"], prompts_jsonl(PROMPTS))
        assert (refused.code, refused.out, other.requests) == (2, "", [])
        assert refused.err == (f"lalm-chat: error: --resume: the run's model 'scripted': the server at "
                               f"{other.base_url} serves 'another-model', not 'scripted'\n")
        assert out.read_bytes() == before
    with ForkedServer(answer) as restarted:
        resumed = run_main(chat.main, ["--base-url", restarted.base_url, "--output", str(out), "--resume"],
                           prompts_jsonl(PROMPTS))
        requests = restarted.requests
    assert resumed.code == 0, resumed.err
    assert (f"lalm-chat: --resume: the run was against {first.base_url}; it goes on against "
            f"{restarted.base_url}, which serves the same model 'scripted'\n") in resumed.err
    recs = check_complete(out, requests)
    assert recs[0]["base_url"] == first.base_url
    assert [t["base_url"] for t in recs[1:]] == [None, None] + [restarted.base_url] * 4
    assert len(requests) == 4


@pytest.mark.parametrize("change, code", [(["--model", "other"], 2), (["--prompt-text"], 2), (["--server-gone"], 1)])
def test_a_refused_resume_leaves_every_byte_of_the_file_as_it_was(tmp_path, api_key, change, code):
    out = tmp_path / "run.jsonl"
    texts = PROMPTS[:1] + ["another question"] + PROMPTS[2:] if change == ["--prompt-text"] else PROMPTS
    flags = ["--resume"] + (change if change[0] == "--model" else [])
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        args = ["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out)]
        assert run_main(chat.main, args + ["--num-rounds", "2"], prompts_jsonl(PROMPTS)).code == 0
        with open(out, "a") as fp:
            fp.write('{"kind":"turn","v":2,"run_id":')          # a kill in the middle of a write
        before = out.read_bytes()
        if change != ["--server-gone"]:
            ran = run_main(chat.main, args + flags, prompts_jsonl(texts))
    if change == ["--server-gone"]:
        ran = run_main(chat.main, args + flags, prompts_jsonl(texts))
    assert (ran.code, ran.out) == (code, "") and ran.err.count("\n") == 1, ran.err
    assert out.read_bytes() == before


# ---- signals at any moment: every record whole, in the file and on stdout alike ----

def read_until(stream, text, timeout=20):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"no {text!r} in {seen}")


def busy_then_ok(i, body):
    if i == 1:
        return Script(status=503, body=b'{"error":{"message":"busy"}}',
                      headers={"Content-Type": "application/json", "Retry-After": "30"})
    return stream("plain", n_content=3, ttft_s=0.01)[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_a_retry_back_off_records_the_turn_as_interrupted(tmp_path, sig):
    out = tmp_path / "run.jsonl"
    with ForkedServer(busy_then_ok) as srv:
        proc = start_chat(srv.base_url, out)
        read_until(proc.stderr, "retry 1 in 30 s")
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 130
    recs = lines(out)
    assert [r.get("status") for r in recs] == [None, "ok", "interrupted"]
    assert recs[-1]["error"]["kind"] == "interrupted" and recs[-1]["http_status"] == 503
    assert [json.loads(line) for line in stdout.splitlines()] == recs


def test_a_signal_during_a_probe_records_the_probe_as_interrupted(tmp_path):
    def answer(i, body):
        last = body["messages"][-1]["content"]
        if "question number" in last:
            return stream("plain", n_content=3, ttft_s=0.01)[0]
        return stream("plain", n_content=3, ttft_s=30)[0]         # the probe stalls
    out = tmp_path / "run.jsonl"
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps({"facts": [{"id": "n", "stated_in": 1, "question": "Which number?",
                                            "answer": "1"}]}))
    with ForkedServer(answer) as srv:
        proc = start_chat(srv.base_url, out, "--probe-every", "1", "--facts", str(facts))
        deadline = time.monotonic() + 20
        while not any(r["body"]["messages"][-1]["content"] == "Which number?" for r in srv.requests):
            assert time.monotonic() < deadline
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=10)
    assert proc.returncode == 130
    recs = lines(out)
    assert [(r["kind"], r.get("status")) for r in recs] == [("run", None), ("turn", "ok"),
                                                           ("probe", "interrupted")]
    assert [json.loads(line) for line in stdout.splitlines()] == recs


class SignalOnWrite(io.StringIO):
    """A stdout that gets SIGTERM while the first turn record is on its way to it."""
    sent = False

    def write(self, text):
        if not self.sent and '"kind":"turn"' in text:
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)
        return super().write(text)


def test_a_signal_between_the_file_and_stdout_loses_nothing(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        stdout = SignalOnWrite()
        code = chat.main(["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out)],
                         io.BytesIO(prompts_jsonl(PROMPTS).encode()), stdout, io.StringIO())
    assert code == 130 and stdout.sent
    recs = lines(out)
    assert [r["kind"] for r in recs] == ["run", "turn"] and recs[1]["status"] == "ok"
    assert [json.loads(line) for line in stdout.getvalue().splitlines()] == recs


def spaced_answer(dialect, slow_request=None):
    """Answers wrapped in whitespace, with reasoning inline or in a field of its own;
    the request numbered slow_request holds its answer back for 5 s."""
    def answer(i, body):
        n = sum(m["role"] == "user" for m in body["messages"])
        if dialect == "inline":
            texts = ("\n", "<think>", f"\nweigh {n}\n", "</think>", f"\n\n  Answer {n}.  \n")
            deltas = [{"content": t} for t in texts]
        else:
            deltas = [{"reasoning_content": f" weigh {n} "}, {"content": f"  Answer {n}.  \n"}]
        return deltas_script(deltas, wait_s=5.0 if i == slow_request else 0.0)
    return answer


@pytest.mark.parametrize("dialect, flags", [("inline", []), ("reasoning_content", ["--keep-reasoning"])])
def test_a_resumed_run_sends_the_history_an_uninterrupted_one_sends(tmp_path, api_key, dialect, flags):
    with ForkedServer(spaced_answer(dialect)) as srv:
        whole = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", *flags],
                         prompts_jsonl(PROMPTS))
        assert whole.code == 0, whole.err
        expected = [r["body"]["messages"] for r in srv.requests]
    # the answers go back exactly as streamed: whitespace and an inline block kept
    answers = [m["content"] for m in expected[-1] if m["role"] == "assistant"]
    lead = "\n" if dialect == "inline" else ""
    assert answers == [f"{lead}<think>\nweigh {n}\n</think>\n\n  Answer {n}.  \n" for n in range(1, 6)]
    out = tmp_path / "run.jsonl"
    with ForkedServer(spaced_answer(dialect, slow_request=2)) as srv:
        proc = start_chat(srv.base_url, out, *flags)
        wait_for_turns(out, 2)
        time.sleep(0.2)                                      # turn 3 waits for its answer
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        assert lines(out)[-1]["status"] == "interrupted"
        resumed = start_chat(srv.base_url, out, "--resume")  # the run's own --keep-reasoning
        _, stderr = resumed.communicate(timeout=60)
        got = [r["body"]["messages"] for r in srv.requests]
    assert resumed.returncode == 0, stderr
    assert got == expected[:3] + expected[2:]                # turn 3 asked twice, the same way


def test_a_facts_flag_without_probes_leaves_the_run_record_readable(tmp_path, api_key):
    out = tmp_path / "run.jsonl"
    with ForkedServer(lambda i, b: stream("plain", n_content=3, ttft_s=0.01)[0]) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q", "--output", str(out),
                                   "--num-rounds", "1", "--facts", str(tmp_path / "unused.json")],
                       prompts_jsonl(PROMPTS))
    assert ran.code == 0, ran.err
    assert ran.records[0]["settings"]["facts"] is None
    assert run_main(metrics.main, [str(out)]).code == 0
