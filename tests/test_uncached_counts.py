"""A server that counts only the prompt tokens it had not cached, as some Ollama releases
did: read as such, never as truncation; a window it really cut still is, at its turn."""
import json
import math

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import chat, metrics, report
from scripted import ForkedServer, sse

WORDS = ("mel spectrogram encoder decoder tokenizer attention window latent codec sidechain "
         "compressor transient reverb tempo chord stem vocal mixing mastering loudness").split()


def text(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def server_tokens(message: dict) -> int:
    """The scripted model's own tokenizer: not cl100k (1.25 a word), 4 a message for its template."""
    return math.ceil(1.25 * len(message["content"].split())) + 4


class UncachedCounter:
    """Answers each request with its own length of text and counts, as prompt tokens, only
    what follows the prefix it kept from the last request: that request's messages and,
    with `answer_cached`, the answer it generated. Past `cap` tokens it keeps the latest
    `cap` and evaluates them all again (an Ollama at num_ctx); `cached_field` also sends
    the cached count as prompt_tokens_details.cached_tokens."""

    def __init__(self, answers, answer_cached=True, cap=None, cached_field=False):
        self.answers, self.answer_cached, self.cap, self.cached_field = answers, answer_cached, cap, cached_field
        self.kept: list[dict] = []

    def __call__(self, i, body):
        messages = body["messages"]
        answer = text(self.answers[i], i)
        whole = sum(server_tokens(m) for m in messages)
        same = 0
        for kept, sent in zip(self.kept, messages):
            if kept != sent:
                break
            same += server_tokens(kept)
        counted = same if self.kept and len(messages) > len(self.kept) else 0
        if self.cap is not None and whole > self.cap:      # cut to the window: all of it evaluated again
            prompt, cached, self.kept = self.cap, 0, []
        else:
            prompt, cached = whole - counted, counted
            self.kept = messages + ([{"role": "assistant", "content": answer}] if self.answer_cached else [])
        usage = {"prompt_tokens": prompt, "completion_tokens": server_tokens({"content": answer}) - 4}
        if self.cached_field:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return sse((0.01, json.dumps({"choices": [{"index": 0, "delta": {"content": answer}}]})),
                   (0.02, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})),
                   (0.021, json.dumps({"choices": [], "usage": usage})), (0.022, "[DONE]"))


SYSTEM = text(40, 99)


def run(server, prompts, *args, routes=None):
    with ForkedServer(server, routes=routes) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "-q", *args], prompts_jsonl(prompts))
        sent = srv.requests
    assert ran.code == 0, ran.err
    m = run_main(metrics.main, [], ran.out)
    rows = [r for r in m.records if r["kind"] == "metrics"]
    doc = json.loads(run_main(report.main, ["--format", "json"], m.out).out)
    return rows, doc, sent


SHAPES = {
    # a short first prompt, long answers: each turn adds more than the first prompt held
    "short first prompt": (dict(answers=[120, 150, 130, 140, 160, 150]), [], [8, 30, 30, 30, 30, 30]),
    "system prompt": (dict(answers=[120, 150, 130, 140, 160, 150]), ["--system", SYSTEM], [8, 30, 30, 30, 30, 30]),
    # the answer not kept (the server tokenized the resent text another way): counted again
    "answers of varying length": (dict(answers=[10, 200, 40, 150, 5, 90], answer_cached=False), [],
                                  [12, 25, 6, 40, 30, 20]),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_counts_of_the_uncached_part_are_never_truncation(api_key, shape):
    kwargs, args, lengths = SHAPES[shape]
    rows, doc, sent = run(UncachedCounter(**kwargs), [text(n, k) for k, n in enumerate(lengths)], *args)
    assert len(sent) == 6
    assert [r["truncated"] for r in rows] == [False] * 6
    sources = [r["prompt_tokens_source"] for r in rows]
    if shape == "answers of varying length":
        # while a part counted again (the 200-word answer) is most of the conversation, it is as
        # plausible a count of the whole, grown: read as such, never as a truncation
        assert sources == ["server"] * 3 + ["server-uncached"] * 3
    else:
        assert sources == ["server"] + ["server-uncached"] * 5
    assert doc["ceiling"] is None
    assert doc["summary"]["context_source"] == "client (cl100k estimate)"


def test_a_cached_count_beside_the_uncached_one_gives_the_whole(api_key):
    lengths = [8, 30, 30, 30, 30, 30]
    rows, doc, sent = run(UncachedCounter([120, 150, 130, 140, 160, 150], cached_field=True),
                          [text(n, k) for k, n in enumerate(lengths)])
    assert [r["prompt_tokens_source"] for r in rows] == ["server"] + ["server+cached"] * 5
    # the server's count of each whole request, as it tokenized it
    assert [r["prompt_tokens"] for r in rows] == [sum(server_tokens(m) for m in s["body"]["messages"])
                                                  for s in sent]
    assert [r["truncated"] for r in rows] == [False] * 6
    assert doc["ceiling"] is None and doc["summary"]["context_source"] == "server"


def first_over(sent, cap):
    return next(i for i, s in enumerate(sent) if sum(server_tokens(m) for m in s["body"]["messages"]) > cap) + 1


@pytest.mark.parametrize("shape", SHAPES)
def test_a_window_that_cut_the_conversation_is_still_truncation_at_its_turn(api_key, shape):
    kwargs, args, lengths = SHAPES[shape]
    cap = 700
    # Ollama says its window (num_ctx) in /api/show
    rows, doc, sent = run(UncachedCounter(**kwargs, cap=cap), [text(n, k) for k, n in enumerate(lengths)], *args,
                          routes={"/api/show": {"model_info": {"llama.context_length": 131072},
                                                "parameters": f"num_ctx {cap}"}})
    turn = first_over(sent, cap)
    assert 2 < turn <= 6
    assert [r["truncated"] for r in rows] == [t >= turn for t in range(1, 7)]
    assert doc["ceiling"]["turn"] == turn and doc["ceiling"]["reason"] == "truncation"


def test_without_the_window_a_cut_is_seen_when_the_count_stops_growing(api_key):
    # no window known: the first cut count (all of the kept tokens, evaluated again) is less
    # than the request but more than the server had counted before, as a tokenizer could
    # explain; the next one, where the count stays while the request grows, cannot be
    cap = 500
    lengths = [8, 30, 30, 30, 30, 30]
    rows, doc, sent = run(UncachedCounter([120, 150, 130, 140, 160, 150], cap=cap),
                          [text(n, k) for k, n in enumerate(lengths)])
    cut = first_over(sent, cap)
    assert cut == 4
    assert [r["prompt_tokens"] for r in rows[cut - 1:]] == [cap] * 3
    assert [r["prompt_tokens_source"] for r in rows] == ["server", "server-uncached", "server-uncached",
                                                         "server", "server", "server"]
    assert [r["truncated"] for r in rows] == [False, False, False, False, True, True]
    assert doc["ceiling"]["turn"] == cut + 1
