"""The running ledger of a conversation: what each request carried, by the client's count,
beside what the server counted; each turn and probe measured against it. lalm-metrics
keeps one per run, and lalm-chat's live line one for the run it is making.
"""
from __future__ import annotations

import re

from . import measure, recall, tokens
from .history import own_answer
from .outcome import context_tokens
from .reasoning import read_stream
from .records import DEFAULT_SETTINGS, STATUS_OK, Metrics, Probe, Recall, Run, Turn
from .stats import r3, r6
from .vocab import CountSource, ErrorKind


class Ledger:
    """Client-side token count of what each request carried."""

    def __init__(self, run: Run | None):
        settings = run.settings if run else DEFAULT_SETTINGS
        self.keep_reasoning = settings.keep_reasoning
        self.window = run.server.context_window if run else None
        rule = settings.rule or {}
        try:
            self.rule_check = re.compile(rule["check"]) if rule.get("check") else None
        except (re.error, TypeError) as e:
            raise ValueError(f"run record: settings.rule.check is not a regular expression ({e})") from None
        # the standing rule rides with the first question
        self.history_tokens = _add(_count(settings.system or ""), _count(rule.get("text") or ""))
        # the least the server can have counted of the last answered request (measure.truncated)
        self.prev_prompt_tokens: int | None = None
        self.prev_request_tokens: int | None = None
        # prompt id -> (turn, tokens before it, repeats that had entered nothing before it)
        self.asked_at: dict[int | None, tuple[int, int | None, int]] = {}
        # sendings of a chosen turn again (--repeat): numbered turns that are not the conversation's
        self.repeats_unentered = 0

    def measure(self, turn: Turn) -> Metrics:
        for ex in turn.skipped:     # in the history, never sent
            self._enter(ex.prompt.id, ex.turn, _count(ex.prompt.text), _count(ex.answer))
        prompt_n = _count(turn.prompt.text)
        # a cold request's marker was sent once, and never entered the history
        request_tokens = _add(self.history_tokens, _add(prompt_n, _count(turn.marker or "")))
        view = read_stream(turn.chunks)
        # each text is counted once: tiktoken is the costly part of a turn
        content_n, reasoning_n = _count(view.content), _count(view.reasoning)
        entered = own_answer(turn, view, self.keep_reasoning)     # what lalm-chat appended
        history = view.history_text(self.keep_reasoning) if entered is None else entered
        answer_n = content_n if history == view.content else _count(history)
        growth = self._growth(request_tokens)
        row = _metrics(turn, view, self, request_tokens, growth, content_n, reasoning_n)
        row.conversation_tokens = _add(request_tokens, answer_n)
        _answer_signals(row, turn, view, self.rule_check)
        if turn.status == STATUS_OK:
            self._counted(row, growth)
            self.prev_request_tokens = request_tokens
        if entered is not None:
            self._enter(turn.prompt.id, turn.turn, prompt_n, answer_n)
        elif turn.repeat is not None:
            self.repeats_unentered += 1
        row.repeat = turn.repeat
        return row

    def _growth(self, request_tokens: int | None) -> int | None:
        """What a request added since the last answered one, by the client's count."""
        return None if self.prev_request_tokens is None or request_tokens is None \
            else request_tokens - self.prev_request_tokens

    def _counted(self, row: Metrics, growth: int | None) -> None:
        """Keep what an answered turn's prompt count says of the server's view."""
        source, n = row.prompt_tokens_source, row.prompt_tokens
        if source is not None and source.is_whole_prompt:
            self.prev_prompt_tokens = n
        elif source == CountSource.SERVER_UNCACHED and self.prev_prompt_tokens is not None and n is not None:
            # this request held the last one, and the part the server counted beyond what it
            # had cached; no more of it than the request added (a cache that lost some of the
            # older part counts that again)
            self.prev_prompt_tokens += n if growth is None else max(0, min(n, growth))

    def _enter(self, prompt_id: int | None, turn: int, prompt_n: int | None, answer_n: int | None) -> None:
        """A prompt and its answer join the history the next request carries."""
        self.asked_at[prompt_id] = (turn, self.history_tokens, self.repeats_unentered)
        self.history_tokens = _add(self.history_tokens, _add(prompt_n, answer_n))

    def score(self, probe: Probe) -> Recall:
        """Score a forked probe: the right number in the answer?"""
        view = read_stream(probe.chunks)
        times = measure.timing(view)
        usage = view.usage or {}
        asked = _add(self.history_tokens, _count(probe.asked))
        prompt, source = measure.read_prompt_count(usage.get("prompt_tokens"), measure.cached_tokens(usage, None),
                                                   usage.get("completion_tokens"), asked, self._growth(asked),
                                                   self.prev_prompt_tokens, self.window)
        return Recall(run_id=probe.run_id, after_turn=probe.after_turn, fact_id=probe.fact.id,
                      form=probe.form, question=probe.asked,
                      expected=probe.fact.answer, answer=view.content,
                      correct=probe.status == STATUS_OK and recall.correct(view.content, probe.fact),
                      status=probe.status,
                      context_tokens=context_tokens(prompt, usage.get("completion_tokens"))
                      if source is not None and source.is_whole_prompt else None,
                      ttft_s=r6(times["ttft_s"]), e2e_s=r6(times["e2e_s"]),
                      context_tokens_est=_add(asked, _count(view.content)),
                      **self._distance(probe))

    def _distance(self, probe: Probe) -> dict:
        """How far back the fact was stated: turns and tokens, and its depth in the context."""
        if probe.fact.stated_in not in self.asked_at:
            return {}
        turn, before, repeats = self.asked_at[probe.fact.stated_in]
        now = self.history_tokens
        since = None if now is None or before is None else now - before
        # in turns of the conversation: a turn sent again (--repeat) is one turn of it
        turns_since = probe.after_turn - turn - (self.repeats_unentered - repeats)
        return {"stated_turn": turn, "turns_since_stated": turns_since,
                "tokens_since_stated": since,
                "depth": None if before is None or not now else round(before / now, 4)}


def _answer_signals(row: Metrics, turn: Turn, view, rule_check) -> None:
    """Signs of degeneration, and whether the standing rule still holds."""
    ok = turn.status == STATUS_OK
    row.repeat_3gram_ratio = recall.repeat_ngram_ratio(view.content) if ok else None
    row.empty_answer = ok and not view.content
    row.hit_max_tokens = view.finish_reason == "length"
    # an answer cut by max_tokens never reached the end, where the rule's line goes: not judged
    row.rule_kept = bool(rule_check.search(view.content)) if ok and rule_check and not row.hit_max_tokens else None


def _count(text: str) -> int | None:
    return tokens.count(text)


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _metrics(turn: Turn, view, conv: Ledger, request_tokens: int | None, growth: int | None,
             content_n: int | None, reasoning_n: int | None) -> Metrics:
    times = measure.timing(view)
    counts = measure.token_counts(view.usage, reasoning_n, content_n)
    n_gen = measure.generated_tokens(counts, len(view.tokens))
    cached = measure.cached_tokens(view.usage, view.timings)
    if counts["prompt_tokens"] is None and turn.error:
        counts["prompt_tokens"] = measure.overflow_prompt_tokens(turn.error.body)
    c = counts["completion_tokens"]    # the server's
    prompt_n, prompt_source = measure.read_prompt_count(counts["prompt_tokens"], cached, c, request_tokens,
                                                        growth, conv.prev_prompt_tokens, conv.window)
    whole = prompt_source is not None and prompt_source.is_whole_prompt
    error = turn.error
    # where the server counted nothing, the client's count of what was sent and received
    answer_n = _add(reasoning_n, content_n)
    context_n, context_source = measure.counted(context_tokens(prompt_n, c) if whole else None,
                                                _add(request_tokens, answer_n))
    counts["prompt_tokens"], counts["completion_tokens"] = prompt_n, measure.counted(c, answer_n)[0]
    server_prompt = prompt_n if whole or prompt_source == CountSource.SERVER_UNCACHED else None
    return Metrics(
        run_id=turn.run_id, turn=turn.turn, prompt_id=turn.prompt.id,
        tier=turn.prompt.tier, status=turn.status, error_kind=error.kind if error else None,
        finish_reason=view.finish_reason,
        ttft_s=r6(times["ttft_s"]), ttft_content_s=r6(times["ttft_content_s"]),
        e2e_s=r6(times["e2e_s"]),
        decode_tps=r3(measure.decode_tps(n_gen, times["ttft_s"], times["e2e_s"])),
        itl_p50_s=r6(times["itl_p50_s"]), itl_p95_s=r6(times["itl_p95_s"]),
        itl_max_s=r6(times["itl_max_s"]),
        **counts,
        has_reasoning=bool(view.reasoning), reasoning_s=r6(times["reasoning_s"]),
        cached_tokens=cached,
        # what the server processed: the whole less its cache, or the uncached part it counted
        prefill_tps=r3(measure.prefill_tps(server_prompt, cached if whole else None, times["ttft_s"])),
        context_tokens=context_n, context_tokens_source=context_source,
        truncated=whole and measure.truncated(prompt_n, c, conv.prev_prompt_tokens, growth, conv.window),
        server_timings=view.timings,
        prompt_tokens_source=prompt_source,
        context_tokens_est=_add(request_tokens, answer_n),
        overflow_tokens=measure.overflow_tokens(error.body) if error and error.kind == ErrorKind.CONTEXT_OVERFLOW
        else None,
    )
