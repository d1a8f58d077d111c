"""lalm-chat refuses what cannot make a run before it sends a request: one line on
stderr naming the flag, the file or the line, and the exit code of its kind."""
import os

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import chat
from scripted import ForkedServer, stream

PROMPTS = ["first question", "second question", "third question"]


def ok(i, body):
    return stream("plain", n_content=3, ttft_s=0.01)[0]


def test_a_repeated_prompt_id_is_refused_with_its_source_and_line_before_any_request(api_key, tmp_path):
    three = tmp_path / "p3.jsonl"
    three.write_text(prompts_jsonl(PROMPTS))
    again = tmp_path / "again.jsonl"
    again.write_text(prompts_jsonl(PROMPTS[:1]))
    with ForkedServer(ok) as srv:
        piped = run_main(chat.main, ["--base-url", srv.base_url, "-q"],
                         prompts_jsonl(PROMPTS) + prompts_jsonl(PROMPTS[:1]))
        files = run_main(chat.main, ["--base-url", srv.base_url, "-q", str(three), str(again)])
        sent = srv.requests
    assert (piped.code, piped.out) == (1, "")
    assert piped.err == ("lalm-chat: error: stdin:4: prompt id 1 again (first at stdin:1): "
                         "a prompt id names one turn, for --resume and --history\n")
    assert (files.code, files.out) == (1, "")
    assert files.err.startswith(f"lalm-chat: error: {again}:1: prompt id 1 again (first at {three}:1)")
    assert sent == []


BAD_URLS = [
    ("notaurl", "'notaurl' is not an http:// or https:// URL (e.g. http://localhost:1234/v1)"),
    ("ftp://x/v1", "'ftp://x/v1' is not an http:// or https:// URL (e.g. http://localhost:1234/v1)"),
    ("http://", "'http://' names no host (e.g. http://localhost:1234/v1)"),
    ("http:///v1", "'http:///v1' names no host (e.g. http://localhost:1234/v1)"),
    ("http://[::1", "'http://[::1' is not a URL: invalid IPv6 URL"),
    ("http://127.0.0.1:65536/v1", "'http://127.0.0.1:65536/v1': the port must be a number from 1 to 65535"),
    ("http://127.0.0.1:0/v1", "'http://127.0.0.1:0/v1': the port must be a number from 1 to 65535"),
    ("http://h:port/v1", "'http://h:port/v1': the port must be a number from 1 to 65535"),
    ("user:KEY-9f2c@x", "'***@x' is not an http:// or https:// URL (e.g. http://localhost:1234/v1)"),
    ("http://user:KEY-9f2c@:99999/v1", "'http://***@:99999/v1' names no host (e.g. http://localhost:1234/v1)"),
]


@pytest.mark.parametrize("url, message", BAD_URLS)
def test_a_base_url_that_is_not_http_with_a_host_and_a_port_is_a_usage_error(api_key, monkeypatch, url, message):
    flag = run_main(chat.main, ["--base-url", url, "--model", "m"], prompts_jsonl(PROMPTS))
    assert (flag.code, flag.out, flag.err) == (2, "", f"lalm-chat: error: --base-url {message}\n")
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    env = run_main(chat.main, ["--model", "m"], prompts_jsonl(PROMPTS))
    assert (env.code, env.out, env.err) == (2, "", f"lalm-chat: error: OPENAI_BASE_URL {message}\n")


def test_a_base_url_with_a_host_name_a_port_and_a_trailing_slash_is_taken(api_key):
    with ForkedServer(ok) as srv:
        port = srv.base_url.rsplit(":", 1)[1].split("/")[0]
        ran = run_main(chat.main, ["--base-url", f"http://localhost:{port}/v1/", "-q"], prompts_jsonl(PROMPTS[:1]))
    assert ran.code == 0, ran.err
    assert ran.records[0]["base_url"] == f"http://localhost:{port}/v1"


def test_an_output_that_cannot_be_written_is_refused_in_words_before_the_server_is_asked(
        api_key, tmp_path, monkeypatch):
    from lalmpipe.localserver import free_port
    nowhere = f"http://127.0.0.1:{free_port()}/v1"     # asked first, it would say it cannot connect
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "done.jsonl").write_text('{"kind":"run"}\n')
    cases = {
        "logs/x.jsonl": "no such folder logs",
        "notes.txt/x.jsonl": "notes.txt is not a folder",
        ".": "it is a folder",
        "done.jsonl": "it already holds a run; use --resume to continue it or choose another --output",
    }
    for path, why in cases.items():
        ran = run_main(chat.main, ["--base-url", nowhere, "--model", "m", "--output", path],
                       prompts_jsonl(PROMPTS))
        assert (ran.code, ran.out, ran.err) == (1, "", f"lalm-chat: error: cannot write --output {path}: {why}\n")
    assert sorted(os.listdir(tmp_path)) == ["done.jsonl", "notes.txt"]
    assert (tmp_path / "done.jsonl").read_text() == '{"kind":"run"}\n'


def test_a_server_not_listening_is_named_in_words_with_what_to_do(api_key, monkeypatch):
    from lalmpipe.localserver import free_port
    port = free_port()
    ran = run_main(chat.main, ["--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m"], prompts_jsonl(PROMPTS))
    assert (ran.code, ran.out) == (1, "")
    assert ran.err == (f"lalm-chat: error: cannot connect to http://127.0.0.1:{port}/v1: connection refused "
                       "(is the server running? set --base-url or OPENAI_BASE_URL)\n")
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://bench:KEY-77a1@127.0.0.1:{port}/v1")
    ran = run_main(chat.main, [], prompts_jsonl(PROMPTS))
    assert ran.err.startswith(f"lalm-chat: error: cannot connect to http://***@127.0.0.1:{port}/v1: connection refused")
