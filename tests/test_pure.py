"""Pure parts against hand-computed values, and their invariants."""
import json

import pytest
from hypothesis import given, strategies as st

import msgspec

from lalmpipe import aggregate, measure, stats
from lalmpipe.records import Metrics
from lalmpipe.reasoning import ThinkSplitter, read_stream
from lalmpipe.sse import encode_event, timed_events


def test_percentile_by_hand():
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 95) == pytest.approx(3.85)
    assert stats.percentile([5.0], 95) == 5.0
    assert stats.percentile([], 50) is None


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0, 100), st.floats(0, 100))
def test_percentiles_rise_with_q(values, q1, q2):
    lo, hi = sorted((q1, q2))
    assert stats.percentile(values, lo) <= stats.percentile(values, hi) + 1e-9


def test_decode_tps_counts_tokens_after_the_first():
    # 11 tokens, first at 0.5 s, last at 1.5 s: 10 tokens in 1 s
    assert measure.decode_tps(11, 0.5, 1.5) == 10.0
    assert measure.decode_tps(1, 0.5, 0.5) is None
    assert measure.decode_tps(None, 0.5, 1.5) is None


def test_slope_by_hand():
    assert stats.slope([0, 1000, 2000], [0.1, 0.3, 0.5]) == pytest.approx(0.0002)
    assert stats.slope([5], [1]) is None


def test_prefill_and_cache():
    assert measure.prefill_tps(1000, 800, 0.5) == 400.0
    assert measure.cached_tokens({"prompt_tokens_details": {"cached_tokens": 7}}, {"cache_n": 9}) == 7
    assert measure.cached_tokens({}, {"cache_n": 9}) == 9
    assert measure.cached_tokens(None, None) is None


def test_token_counts_prefer_the_server():
    usage = {"prompt_tokens": 10, "completion_tokens": 50,
             "completion_tokens_details": {"reasoning_tokens": 20}}
    assert measure.token_counts(usage, 99, 99) == {
        "prompt_tokens": 10, "completion_tokens": 50, "reasoning_tokens": 20,
        "content_tokens": 30, "tokens_source": "server"}
    # only the completion count from the server: the client's split is scaled to it
    got = measure.token_counts({"prompt_tokens": 10, "completion_tokens": 50}, 18, 31)
    assert (got["reasoning_tokens"], got["content_tokens"], got["tokens_source"]) == (18, 32, "server+tiktoken")
    got = measure.token_counts({"completion_tokens": 100}, 30, 10)
    assert (got["reasoning_tokens"], got["content_tokens"]) == (75, 25)
    got = measure.token_counts({"completion_tokens": 7}, 0, 0)
    assert (got["reasoning_tokens"], got["content_tokens"]) == (0, 7)
    got = measure.token_counts(None, 18, 31)
    assert (got["reasoning_tokens"], got["content_tokens"], got["tokens_source"]) == (18, 31, "tiktoken")


@pytest.mark.parametrize("args, expected", [
    ((100, 10, 200, None, None), True),        # prompt shrank
    ((210, 10, 200, 100, None), True),         # grew 10 while the conversation grew 100
    ((280, 10, 200, 100, None), False),        # grew 80 of 100: tokenizers differ
    ((300, 212, 200, 100, 512), True),         # prompt + completion filled the window
    ((300, 100, 200, 100, 512), False),
    ((300, 100, None, None, None), False),     # first turn: nothing to compare
])
def test_truncation_rules(args, expected):
    assert measure.truncated(*args) is expected


def test_think_tags_split_anywhere():
    text = "<think>\nweigh it</think>\n\nThe answer."
    for cut in range(len(text) + 1):
        s = ThinkSplitter()
        parts = [s.feed(text[:cut]), s.feed(text[cut:]), s.flush()]
        assert "".join(p[0] for p in parts) == "\nweigh it"
        assert "".join(p[1] for p in parts) == "\n\nThe answer."


@given(st.text(alphabet="ab<>/thinkT \n", max_size=60), st.lists(st.integers(0, 60), max_size=6))
def test_splitting_does_not_depend_on_chunking(text, cuts):
    whole = ThinkSplitter()
    expected = [whole.feed(text), whole.flush()]
    pieces, last = [], 0
    for c in sorted(set(min(c, len(text)) for c in cuts)) + [len(text)]:
        pieces.append(text[last:c])
        last = c
    s = ThinkSplitter()
    got = [s.feed(p) for p in pieces] + [s.flush()]
    assert "".join(g[0] for g in got) == "".join(e[0] for e in expected)
    assert "".join(g[1] for g in got) == "".join(e[1] for e in expected)


def _chunks(*deltas):
    return [[0.1 * (i + 1), json.dumps({"choices": [{"index": 0, "delta": d}]})] for i, d in enumerate(deltas)]


def test_read_stream_dialects():
    inline = read_stream(_chunks({"role": "assistant"}, {"content": "<thi"}, {"content": "nk>hm"},
                                 {"content": "m</think>\n\n"}, {"content": "Yes"}))
    assert (inline.reasoning, inline.content) == ("hmm", "Yes")
    assert [t for t, _, _ in inline.tokens] == pytest.approx([0.2, 0.3, 0.4, 0.5])
    assert [r for _, r, _ in inline.tokens] == [True, True, True, False]
    rc = read_stream(_chunks({"reasoning_content": "a"}, {"reasoning": "b"}, {"content": "c"}))
    assert (rc.reasoning, rc.content) == ("ab", "c")
    # a template that opens <think> itself: only the closing tag is streamed
    opened = read_stream(_chunks({"content": "plan"}, {"content": "</think>"}, {"content": "Done"}))
    assert (opened.reasoning, opened.content) == ("plan", "Done")


def test_read_stream_usage_finish_and_errors():
    chunks = _chunks({"content": "x"}) + [
        [0.3, json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})],
        [0.4, json.dumps({"choices": [], "usage": {"prompt_tokens": 3}, "timings": {"cache_n": 1}})],
        [0.5, "[DONE]"]]
    v = read_stream(chunks)
    assert (v.finish_reason, v.usage, v.timings, v.done, len(v.tokens)) == (
        "length", {"prompt_tokens": 3}, {"cache_n": 1}, True, 1)
    err = read_stream([[0.1, json.dumps({"error": {"message": "context is full"}}), "error"]])
    assert err.error == {"message": "context is full"}


def _split(data: bytes, cuts):
    out, last = [], 0
    for c in sorted(set(cuts)) + [len(data)]:
        out.append(data[last:c])
        last = c
    return out


@given(st.lists(st.text(min_size=1, max_size=20).filter(lambda s: "\r" not in s), min_size=1, max_size=8),
       st.lists(st.integers(0, 400), max_size=10))
def test_sse_events_survive_any_chunking(payloads, cuts):
    raw = b": hello\n\n" + b"".join(encode_event(p) for p in payloads)
    clock = iter(range(10**6)).__next__
    events = list(timed_events(_split(raw, [min(c, len(raw)) for c in cuts]), clock=clock))
    assert [d for _, _, d in events] == payloads
    assert all(e == "message" for _, e, _ in events)


def test_sse_times_an_event_when_its_line_arrives():
    reads = [b"data: a\n", b"\ndata: b", b"\n\n", b"event: error\ndata: c\n\n", b"data: cut"]
    clock = iter([10, 20, 30, 40, 50]).__next__
    assert list(timed_events(reads, clock=clock)) == [(10, "message", "a"), (30, "message", "b"),
                                                     (40, "error", "c")]
    assert list(timed_events([b"data: x\r\n\r\n"], clock=lambda: 1)) == [(1, "message", "x")]


def test_odd_chunk_shapes_do_not_break_the_reading():
    parts = read_stream(_chunks({"content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
                                {"content": 7}) + [[0.9, '{"choices": ["x"], "usage": "n/a"}']])
    assert parts.content == "Hello" and len(parts.tokens) == 1 and parts.usage is None


def test_a_lone_angle_bracket_in_the_answer_is_not_reasoning():
    v = read_stream(_chunks({"content": "vector"}, {"content": "<"}, {"content": "float> x"}))
    assert v.content == "vector<float> x" and v.reasoning == ""
    assert [r for _, r, _ in v.tokens] == [False, False, False]
    opened = read_stream(_chunks({"content": "<"}, {"content": "think>hm</think>"}, {"content": "A"}))
    assert [r for _, r, _ in opened.tokens] == [True, True, False] and opened.reasoning == "hm"


def rows_of(*dicts):
    return [Metrics(run_id="r", turn=i, **d) for i, d in enumerate(dicts, 1)]


def test_the_ceiling_is_the_context_breaking_not_any_failure():
    rows = rows_of({"status": "ok", "context_tokens": 900},
                   {"status": "error", "error_kind": "connection"},
                   {"status": "ok", "context_tokens": 1900},
                   {"status": "error", "error_kind": "http"},
                   {"status": "error", "error_kind": "context_overflow", "prompt_tokens": 2100,
                    "prompt_tokens_source": "server"})
    assert msgspec.to_builtins(aggregate.ceiling(rows)) == {"turn": 5, "context_tokens": 2100,
                                                            "reason": "context_overflow",
                                                            "last_ok_context_tokens": 1900, "over_window_tokens": None,
                                                            "overflow_tokens": None}
    assert aggregate.ceiling(rows[:4]) is None


def test_the_ceiling_never_mixes_server_and_client_counts():
    # a failed turn whose size only the client counted: in server units it is unknown
    rows = rows_of({"status": "ok", "context_tokens": 400, "context_tokens_est": 380},
                   {"status": "error", "error_kind": "context_overflow", "context_tokens_est": 482})
    c = aggregate.ceiling(rows, window=512)
    assert (c.context_tokens, c.last_ok_context_tokens, c.over_window_tokens) == (None, 400, 512)
    # in client units (the report swaps the estimate in for every row) both sizes are estimates
    est = [msgspec.structs.replace(r, context_tokens=r.context_tokens_est) for r in rows]
    c = aggregate.ceiling(est, window=512, estimated=True)
    assert (c.context_tokens, c.last_ok_context_tokens) == (482, 380)


def test_reasoning_share_counts_answered_turns_only():
    rows = rows_of({"status": "ok", "has_reasoning": True, "reasoning_tokens": 4, "reasoning_s": 0.1},
                   {"status": "error", "has_reasoning": True}, {"status": "ok", "has_reasoning": False})
    s = aggregate.reasoning_summary(rows)
    assert (s.turns_with_reasoning, s.share) == (1, 0.5)


@pytest.mark.parametrize("prompt, cached, whole, growth, prev, window, read", [
    (0, None, 960, 60, 900, None, (0, "server-uncached")),          # Ollama: the whole prompt came from its cache
    (75, None, 960, 60, 900, None, (75, "server-uncached")),        # only what was added since the last request
    (62, None, 84, 52, 38, None, (62, "server-uncached")),          # ... more than the first prompt held
    (3, None, 960, 0, 900, None, (3, "server-uncached")),           # the same request again (--repeat)
    (62, 38, 84, 52, 38, None, (100, "server+cached")),             # the uncached part, the cached beside it
    (1000, 900, 960, 60, 940, None, (1000, "server")),              # llama.cpp: the whole, of which 900 cached
    (None, None, 960, 60, 900, None, (960, "estimate")),
    (950, None, 900, 60, 890, None, (950, "server")),               # the whole prompt, grown
    (2040, None, 2108, 60, 2040, None, (2040, "server")),           # a truncating server: stuck, far above a part
    (500, None, 700, 300, 500, 512, (500, "server")),               # stuck at the window it reported
    (120, None, 110, None, None, None, (120, "server")),            # nothing to compare with on the first turn
    (90, None, None, None, None, None, (90, "server")),             # no client count to compare with
])
def test_a_count_of_the_uncached_part_only_is_read_as_such(prompt, cached, whole, growth, prev, window, read):
    assert measure.read_prompt_count(prompt, cached, 12, whole, growth, prev, window) == read


def test_overflow_bodies_give_the_prompt_size():
    assert measure.overflow_prompt_tokens('{"error":{"n_prompt_tokens":909,"n_ctx":512}}') == 909
    assert measure.overflow_prompt_tokens("However, you requested 5000 tokens (4000 in the messages, "
                                          "1000 in the completion).") == 4000
    assert measure.overflow_prompt_tokens("no numbers here") is None


@pytest.mark.parametrize("body, n", [
    ('{"error":{"code":400,"message":"request (909 tokens) exceeds the available context size (512 tokens), '
     'try increasing it","type":"exceed_context_size_error","n_prompt_tokens":909,"n_ctx":512}}', 909),
    ('{"object":"error","message":"This model\'s maximum context length is 512 tokens. However, your request has '
     'at least 513 input tokens. Please reduce the length of the input messages.","code":400}', 513),
    ("This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the "
     "messages, 1000 in the completion).", 5000),
    ('{"error": {"n_prompt_tokens": 77}}', 77),
    ("the context window is full", None),
    (None, None),
])
def test_overflow_bodies_give_the_servers_own_count(body, n):
    assert measure.overflow_tokens(body) == n


def test_a_refused_request_is_over_a_known_window_whatever_the_counts():
    rows = rows_of({"status": "ok", "context_tokens": 480},
                   {"status": "error", "error_kind": "context_overflow", "prompt_tokens": 909,
                    "prompt_tokens_source": "server", "overflow_tokens": 909})
    c = aggregate.ceiling(rows, window=512)
    assert (c.context_tokens, c.over_window_tokens, c.overflow_tokens) == (909, 512, 909)
    assert aggregate.ceiling(rows).over_window_tokens is None          # the window unknown
    # an answer cut by a full window did fit in it: that is no request over it
    cut = rows_of({"status": "error", "error_kind": "context_overflow", "finish_reason": "length",
                   "context_tokens": 512})
    assert aggregate.ceiling(cut, window=512).over_window_tokens is None
