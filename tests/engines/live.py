"""What the live engine checks share: an engine started once per module, and a
short recorded run against it: four of the real prompts, then one far longer
than the small window the engine is given, so the fifth turn meets the window
(or shows that the engine enforces none).

LALM_RECORD=1 (make record-engines) keeps each run as
tests/fixtures/engines/ENGINE.jsonl, the recording the fast suite replays.
"""
import contextlib
import http.client
import json
import os
import shutil
import time

import pytest

from conftest import ROOT, Measured, run_main
from lalmpipe import chat, prompts, tokens
from lalmpipe.localserver import LocalServer, prepare

WINDOW_TOKENS = 1024   # small: the long turn overflows it; large enough for four short turns
MAX_TOKENS = 32
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "engines")


@contextlib.contextmanager
def engine(name: str, ctx: int | None = WINDOW_TOKENS):
    """The engine serving SmolLM2 on 127.0.0.1, installed first if need be, stopped at the end."""
    srv = LocalServer("smollm2-135m", ctx=ctx, engine=name)
    prepare(srv.engine, srv.model)
    with srv:
        yield srv


def long_prompt(min_tokens: int) -> str:
    """Real prompts of the run, from the fifth on, joined until they pass min_tokens."""
    texts = [r["text"] for r in run_main(prompts.main, ["--num-rounds", "231"]).records[4:]]
    parts = []
    while tokens.count("\n\n".join(parts)) < min_tokens:
        parts.append(texts[len(parts)])
    return "\n\n".join(parts)


def recording() -> bool:
    """Whether this run keeps what it records as the fast suite's fixture (make record-engines)."""
    return bool(os.environ.get("LALM_RECORD"))


def raw_stream(srv, text: str, max_tokens: int) -> list:
    """Stream one chat answer and keep each line as the server sent it, with its
    time from the request: [[t_s, line], ...] (comments included, which a
    lalm-chat recording leaves out)."""
    body = {"model": srv.served_name, "messages": [{"role": "user", "content": text}], "stream": True,
            "max_tokens": max_tokens, "temperature": 0}
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.read()
    lines = [[round(time.perf_counter() - t0, 6), line.decode()] for line in iter(r.readline, b"")]
    conn.close()
    return lines


def run_fixture(name: str, ctx: int | None = WINDOW_TOKENS):
    """A module's `run`: the engine started once, its recorded run, the engine stopped."""
    @pytest.fixture(scope="module")
    def run(tmp_path_factory):
        with engine(name, ctx=ctx) as srv:
            yield recorded_run(srv, name, tmp_path_factory.mktemp(name))
    return run


def recorded_run(srv, name: str, tmp_path) -> Measured:
    """Four turns and the long one, recorded (lalm-chat --output) and measured."""
    first = run_main(prompts.main, ["--num-rounds", "4"]).out
    long = {"kind": "prompt", "v": 2, "id": 5, "tier": "foundations",
            "text": long_prompt(int(WINDOW_TOKENS * 1.5))}
    output = tmp_path / f"{name}.jsonl"
    c = run_main(chat.main, ["--base-url", srv.base_url, "-q", "--max-tokens", str(MAX_TOKENS),
                             "--temperature", "0", "--output", str(output)],
                 first + json.dumps(long) + "\n")
    assert c.code == 0, c.err
    if recording():
        os.makedirs(FIXTURES, exist_ok=True)
        shutil.copyfile(output, os.path.join(FIXTURES, f"{name}.jsonl"))
    return Measured(c.out)


def events(turn: dict) -> list:
    """The turn's events, parsed ([DONE] left out)."""
    return [json.loads(c[1]) for c in turn["chunks"] if c[1] != "[DONE]"]


def usage(turn: dict) -> dict | None:
    """The usage the engine sent with the turn, if it sent any."""
    found = [e["usage"] for e in events(turn) if e.get("usage")]
    return found[-1] if found else None


def assert_counts_are_the_engines(run: Measured, turns: int = 4) -> None:
    """The first turns are ok and their counts are the engine's usage, to the token."""
    assert [r["status"] for r in run.rows[:turns]] == ["ok"] * turns
    for turn, row in zip(run.turns[:turns], run.rows):
        u = usage(turn)
        assert u is not None, turn["turn"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (u["prompt_tokens"], u["completion_tokens"])
        assert row["context_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert 0 < row["ttft_s"] < row["e2e_s"] and row["decode_tps"] > 0
    prompt_tokens = [r["prompt_tokens"] for r in run.rows[:turns]]
    assert all(b > a for a, b in zip(prompt_tokens, prompt_tokens[1:])), prompt_tokens


def assert_usage_on_a_chunk_without_choices(run: Measured, turns: int = 4) -> None:
    """The engine sends its usage last, on a chunk of its own whose choices are empty."""
    for turn in run.turns[:turns]:
        assert [e for e in events(turn) if e.get("usage")][-1]["choices"] == []
