"""Credentials never leave the process: not in a record, a stderr line or a file,
however they were given and however a server echoes them back."""
import base64
import io
import json

import pytest

from conftest import SECRET, prompts_jsonl, run_main
from lalmpipe import chat
from lalmpipe.cli import entry
from lalmpipe.localserver import free_port
from lalmpipe.redact import credentials, redact
from lalmpipe.replay import Script
from scripted import ForkedServer, sse, stream

USER_KEY = "userinfo-key-5f3a9c"      # the password in the base URL's userinfo
QUERY_KEY = "query-key-8d21e7"        # the base URL's ?api_key=
BASIC = base64.b64encode(f"bench:{USER_KEY}".encode()).decode()   # httpx's header from the userinfo
LEAKS = (SECRET, USER_KEY, QUERY_KEY, BASIC)
JSON = {"Content-Type": "application/json"}


def keyed(base_url):
    """http://127.0.0.1:P/v1 with one key in its userinfo and another in its query."""
    return base_url.replace("http://", f"http://bench:{USER_KEY}@") + f"?api_key={QUERY_KEY}&tag=x"


def echo(url):
    """What a careless server answers: the headers and the URL it was sent, verbatim."""
    return json.dumps({"error": f"bad header Authorization: Bearer {SECRET} (or Basic {BASIC}) "
                                f"for POST {url.replace('/v1', '/v1/chat/completions')}; "
                                f"unknown key {QUERY_KEY}"})


def ok():
    return stream("plain", n_content=3, ttft_s=0.01, rate_tps=1000)[0]


def test_redact_masks_url_credentials_bearer_tokens_and_known_values():
    url = "http://bench:pw-1234@h:1/v1?api_key=K1&model=qwen&access_token=K2&X-Amz-Signature=K3"
    assert redact(url) == "http://***@h:1/v1?api_key=***&model=qwen&access_token=***&X-Amz-Signature=***"
    assert redact("http://TOKEN@h/v1?tag=public") == "http://***@h/v1?tag=public"
    body = '{"error": "bad header Authorization: Bearer sk-abc.DEF_1=; try again"}'
    assert redact(body) == '{"error": "bad header Authorization: Bearer ***; try again"}'
    # the longer key first, so that it is masked whole around the shorter one it holds
    assert redact("sk-zzzz refused, and sk-zzzz-long", ["sk-zzzz", "sk-zzzz-long"]) == "*** refused, and ***"
    # a value too short to be a key is not searched for in free text
    assert redact("exceeds the context (n_ctx 512)", ["x"]) == "exceeds the context (n_ctx 512)"


def test_credentials_of_a_base_url_and_a_key():
    found = credentials("http://bench:p%40ss-word@h/v1?key=q%2Bkey+1&tag=public-tag", "sk-env-key")
    assert set(found) == {"sk-env-key", "p%40ss-word", "p@ss-word", "q%2Bkey+1", "q+key 1",
                          base64.b64encode(b"bench:p@ss-word").decode()}
    assert credentials("http://TOKEN-as-user@h/v1", None) == ("TOKEN-as-user",)
    assert credentials("http://localhost:1234/v1", None) == ()


def test_an_error_line_names_no_credential(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    def fail():
        raise RuntimeError(f"Client error '401' for url 'http://bench:{USER_KEY}@h/v1/models"
                           f"?api_key={QUERY_KEY}' (sent {SECRET})")
    err = io.StringIO()
    assert entry("lalm-chat", fail, io.StringIO(), err) == 1
    assert err.getvalue() == ("lalm-chat: error: Client error '401' for url "
                              "'http://***@h/v1/models?api_key=***' (sent ***)\n")


ANSWERS = {
    "answered": lambda url: [ok()],
    "401 echoing": lambda url: [Script(status=401, body=echo(url).encode(), headers=JSON)],
    "400 echoing": lambda url: [Script(status=400, body=echo(url).encode(), headers=JSON)],
    "500 echoing, retried": lambda url: [Script(status=500, body=echo(url).encode(),
                                                headers={**JSON, "Retry-After": "0"})],
    "SSE error echoing": lambda url: [sse((0.01, echo(url)))],
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_no_credential_is_written_whatever_the_server_answers(api_key, tmp_path, case):
    scripts = []
    srv = ForkedServer(lambda i, body: scripts[min(i, len(scripts) - 1)])
    url = keyed(srv.base_url)
    scripts += ANSWERS[case](url)
    out = tmp_path / "run.jsonl"
    with srv:
        ran = run_main(chat.main, ["--base-url", url, "--retries", "1", "--output", str(out)],
                       prompts_jsonl(["a", "b"]))
        requests = srv.requests
    assert ran.code == 0, ran.err
    written = ran.out + ran.err + out.read_text()
    assert [s for s in LEAKS if s in written] == []
    # the keys reached the server all the same: the userinfo as basic auth, the query as given
    assert requests[0]["target"] == f"/v1/chat/completions?api_key={QUERY_KEY}&tag=x"
    assert requests[0]["headers"]["authorization"] == f"Basic {BASIC}"
    run, turn = ran.records[:2]
    port = srv.base_url.rsplit(":", 1)[1].split("/")[0]
    assert run["base_url"] == f"http://***@127.0.0.1:{port}/v1?api_key=***&tag=x"
    assert run["model"] == "scripted"      # the model listing was asked with the query too
    if case == "answered":
        assert [r["status"] for r in ran.records[1:]] == ["ok", "ok"]
        return
    # the echo is kept, masked: what the server said still reads
    body = turn["error"]["body"]
    assert turn["status"] == "error" and "Authorization: Bearer *** (or Basic ***) for POST http://" in body
    assert f"***@127.0.0.1:{port}/v1/chat/completions?api_key=***&tag=x; unknown key ***" in body
    assert f"stopping at turn 1: {turn['error']['kind']}: bad header Authorization: Bearer ***" in ran.err
    if case.startswith("500"):
        assert turn["attempts"] == 2 and "turn 1: bad header Authorization: Bearer ***" in ran.err


def test_a_key_in_the_query_alone_leaves_the_header_to_the_api_key(api_key):
    with ForkedServer(lambda i, body: ok()) as srv:
        ran = run_main(chat.main, ["--base-url", f"{srv.base_url}/?key={QUERY_KEY}", "-q"],
                       prompts_jsonl(["a"]))
        request = srv.requests[0]
    assert request["headers"]["authorization"] == f"Bearer {SECRET}"
    assert request["target"] == f"/v1/chat/completions?key={QUERY_KEY}"
    assert ran.records[0]["base_url"] == f"{srv.base_url}?key=***"
    assert QUERY_KEY not in ran.out + ran.err and SECRET not in ran.out + ran.err


def test_an_unreachable_server_names_no_credential(api_key, tmp_path):
    port = free_port()
    out = tmp_path / "run.jsonl"
    ran = run_main(chat.main, ["--base-url", keyed(f"http://127.0.0.1:{port}/v1"), "--output", str(out)],
                   prompts_jsonl(["a"]))
    assert ran.code == 1 and ran.out == ""
    assert ran.err.startswith(f"lalm-chat: error: cannot connect to "
                              f"http://***@127.0.0.1:{port}/v1?api_key=***&tag=x: connection refused ")
    assert ran.err.count("\n") == 1
    assert [s for s in LEAKS if s in ran.err + (out.read_text() if out.exists() else "")] == []


def test_the_help_shows_no_credential_of_the_environments_url(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://bench:{USER_KEY}@h:8080/v1?api_key={QUERY_KEY}")
    ran = run_main(chat.main, ["--help"])
    assert ran.code == 0 and "--base-url" in ran.out
    assert [s for s in LEAKS if s in ran.out + ran.err] == []
    assert "(default: $OPENAI_BASE_URL, else http://localhost:1234/v1)" in " ".join(ran.out.split())
