"""Reasoning against the visible answer: where an inline <think> block may
open, which reasoning field counts, and the answer as the history gets it."""
import json

from hypothesis import given, strategies as st

from conftest import run_main
from lalmpipe import metrics, tokens
from lalmpipe.reasoning import read_stream


def _chunks(*deltas):
    return [[0.1 * (i + 1), json.dumps({"choices": [{"index": 0, "delta": d}]})] for i, d in enumerate(deltas)]


def _content(*texts):
    return _chunks(*({"content": t} for t in texts))


# texts made of whole and partial tags, so that tags are common, not a chance
PIECES = ["<think>", "</think>", "<thi", "nk>", "</th", "ink>", "<", "a", "b c", " ", "\n"]
TAGGY = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


def _labels(view):
    return [r for _, r, _ in view.tokens]


def test_a_think_tag_inside_the_answer_is_content():
    v = read_stream(_content("Use the ", "<think>", " tag to open reasoning."))
    assert (v.reasoning, v.content) == ("", "Use the <think> tag to open reasoning.")
    assert _labels(v) == [False, False, False]
    both = read_stream(_content("Wrap it: <thi", "nk>plan</think>", " then answer."))
    assert (both.reasoning, both.content) == ("", "Wrap it: <think>plan</think> then answer.")
    assert _labels(both) == [False, False, False]


def test_after_a_finished_block_every_tag_is_content():
    v = read_stream(_content("<think>hm</think>", "Open with <think>, close with </think>", "."))
    assert (v.reasoning, v.content) == ("hm", "Open with <think>, close with </think>.")
    assert _labels(v) == [True, False, False]
    again = read_stream(_content("<think>a</think>B ", "<think>c</think> D"))
    assert (again.reasoning, again.content) == ("a", "B <think>c</think> D")


def test_a_block_the_template_opened_closes_once():
    v = read_stream(_content("plan", "</think>", "Answer: <think> is ", "a tag</think>."))
    assert (v.reasoning, v.content) == ("plan", "Answer: <think> is a tag</think>.")
    assert _labels(v) == [True, True, False, False]


def test_a_leading_tag_split_after_whitespace_chunks_opens_the_block():
    v = read_stream(_content("\n", " ", "<", "thi", "nk>", "hm", "</think>", "\n\nA"))
    assert (v.reasoning, v.content) == ("hm", "A")
    # whitespace before the tag is not reasoning; every letter of the tag is
    assert _labels(v) == [False, False, True, True, True, True, True, False]
    glued = read_stream(_content("  <th", "ink>hm</think>A"))
    assert (glued.reasoning, glued.content, _labels(glued)) == ("hm", "A", [True, True])


def test_letters_of_a_tag_that_never_comes_are_content():
    v = read_stream(_content(" <", "th", "ick> skin"))
    assert (v.reasoning, v.content, _labels(v)) == ("", "<thick> skin", [False, False, False])


@given(TAGGY, st.lists(st.integers(0, 60), max_size=6))
def test_the_reading_does_not_depend_on_chunking(text, cuts):
    pieces, last = [], 0
    for c in sorted(set(min(c, len(text)) for c in cuts)) + [len(text)]:
        pieces.append(text[last:c])
        last = c
    whole, chunked = read_stream(_content(text)), read_stream(_content(*pieces))
    assert (chunked.reasoning, chunked.content, chunked.raw_content) == (
        whole.reasoning, whole.content, whole.raw_content)
    assert chunked.raw_content == text


@given(TAGGY.filter(lambda s: "</think>" not in s))
def test_an_answer_that_starts_with_text_has_no_reasoning(text):
    v = read_stream(_content("x", text))
    assert (v.reasoning, v.content) == ("", ("x" + text).strip())


def test_raw_content_is_every_content_delta_as_streamed():
    deltas = ["\n", "<think>", "\nweigh it\n", "</think>", "\n\n", "  The answer", " is 42.  ", "\n"]
    v = read_stream(_content(*deltas) + [[0.9, "[DONE]"]])
    assert v.raw_content == "".join(deltas)
    assert (v.content, v.reasoning) == ("The answer is 42.", "weigh it")
    separate = read_stream(_chunks({"role": "assistant", "content": None}, {"reasoning_content": "mull"},
                                   {"content": " Yes"}, {"content": [{"type": "text", "text": ". "}]}))
    assert (separate.raw_content, separate.content, separate.reasoning) == (" Yes. ", "Yes.", "mull")


def test_the_history_text_carries_the_reasoning_once():
    inline = read_stream(_content(" <think>hm</think>\n\nYes. "))
    assert inline.history_text(False) == inline.history_text(True) == " <think>hm</think>\n\nYes. "
    opened = read_stream(_content("hm</think>", "Yes"))        # the template opened the block
    assert opened.history_text(True) == "hm</think>Yes"
    separate = read_stream(_chunks({"reasoning": " hm "}, {"content": "Yes. "}))
    assert separate.history_text(False) == "Yes. "
    assert separate.history_text(True) == "<think>\nhm\n</think>\n\nYes. "
    none = read_stream(_content("Yes"))
    assert none.history_text(True) == "Yes"


def test_a_server_that_fills_both_reasoning_fields_is_read_once():
    same = read_stream(_chunks({"role": "assistant"}, {"reasoning_content": "Let", "reasoning": "Let"},
                               {"reasoning_content": " me", "reasoning": " me"},
                               {"reasoning_content": " see", "reasoning": " see"},
                               {"content": "Ok"}, {}))
    assert (same.reasoning, same.content) == ("Let me see", "Ok")
    assert _labels(same) == [True, True, True, False]
    # the two names are one field (renamed): when they disagree, reasoning_content is read
    differ = read_stream(_chunks({"reasoning_content": "one", "reasoning": "two"}, {"reasoning": " three"}))
    assert differ.reasoning == "one three"


def _recording(chunks_per_turn, keep_reasoning=False):
    run = {"kind": "run", "v": 1, "run_id": "r", "started_at": "t", "tool": {}, "base_url": "u",
           "model": "m", "params": {"keep_reasoning": keep_reasoning}, "server": {}}
    turns = [{"kind": "turn", "v": 1, "run_id": "r", "turn": n, "sent_at": "t",
              "prompt": {"id": n, "tier": "t", "text": f"q{n}"}, "status": "ok", "http_status": 200,
              "error": None, "attempts": 1, "chunks": chunks, "content": "", "reasoning": ""}
             for n, chunks in enumerate(chunks_per_turn, 1)]
    return "".join(json.dumps(r) + "\n" for r in [run, *turns])


def _history_growth(chunks_per_turn, keep_reasoning=False):
    """Tokens lalm-metrics counts for the first answer in the history."""
    ran = run_main(metrics.main, [], _recording(chunks_per_turn, keep_reasoning))
    assert ran.code == 0, ran.err
    second = [r for r in ran.records if r["kind"] == "metrics"][1]
    return second["conversation_tokens"] - tokens.count("q1") - tokens.count("q2") - tokens.count("b")


def test_metrics_count_the_answer_the_history_got():
    inline = ["\n<think>\nweigh it\n</think>\n\n", "  The answer is 42.  \n"]
    assert _history_growth([_content(*inline), _content("b")]) == tokens.count("".join(inline))
    separate = _chunks({"reasoning_content": "weigh it"}, {"content": "  The answer.  "})
    assert _history_growth([separate, _content("b")]) == tokens.count("  The answer.  ")
    assert _history_growth([separate, _content("b")], keep_reasoning=True) == tokens.count(
        "<think>\nweigh it\n</think>\n\n  The answer.  ")
