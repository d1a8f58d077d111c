"""The report's findings in sentences, for people: the summary of a run, its ceiling, its
memory, and whether compared runs were sent the same history."""
from __future__ import annotations

import json

from ..results import Band, Memory, RunReport
from .columns import approx, cell, count, plural


def summary_lines(report: RunReport) -> list[tuple[str, str]]:
    """The summary as (label, sentence) pairs."""
    s, rz = report.summary, report.reasoning
    f = lambda x, spec="": "?" if x is None else format(x, spec)  # noqa: E731
    est, half = s.estimated, s.decode_half_speed_at_context_tokens
    lines = [("TTFT", f"mean {f(s.ttft_mean_s, '.3f')} s, p50 {f(s.ttft_p50_s, '.3f')} s, "
                      f"p95 {f(s.ttft_p95_s, '.3f')} s; "
                      f"{f(s.ttft_slope_s_per_1k_tokens, '+.3f')} s per 1,000 context tokens"),
             ("Decode", f"mean {f(s.decode_tps_mean, '.1f')} tok/s; {f(s.decode_tps_start, '.1f')} "
                        f"at the start, {f(s.decode_tps_end, '.1f')} at the end "
                        f"(x{f(s.decode_ratio_end_to_start, '.2f')})"
                        + (f"; below half speed from {approx(count(half), est)} context tokens" if half else ""))]
    if s.cached_tokens_total is not None and s.cache_prompt_tokens_total:
        lines.append(("Prefix cache", f"{s.cached_tokens_total:,} of {s.cache_prompt_tokens_total:,} "
                                      f"prompt tokens served from cache ({s.cache_hit_ratio:.0%})"))
    if rz.turns_with_reasoning:
        lines.append(("Reasoning", f"in {rz.turns_with_reasoning} of {s.ok} turns; mean "
                                   f"{f(rz.reasoning_tokens_mean, '.0f')} tokens, "
                                   f"{f(rz.reasoning_s_mean, '.2f')} s"))
    else:
        lines.append(("Reasoning", "none seen"))
    lines.append(("Turns", f"{s.turns}: {s.ok} ok, {s.errors} failed, {s.truncated} truncated"
                           + (f", {s.interrupted} interrupted" if s.interrupted else "")
                           + f"; largest context {approx(count(s.max_context_tokens), est)} tokens"
                           + (" (the server did not count every prompt: client estimates)" if est else "")))
    lines.append(("Ceiling", ceiling_sentence(report)))
    return lines + memory_lines(report.memory)


def ceiling_sentence(report: RunReport) -> str:
    c, s = report.ceiling, report.summary
    if c is None:
        # no failure was the context's: each was for another reason, or the user's stop
        others = [f"{s.errors} failed for reasons other than the context"] if s.errors else []
        others += [f"{s.interrupted} interrupted"] if s.interrupted else []
        return (f"No ceiling found in {s.turns} turns"
                + (f" ({', '.join(others)})" if others else "")
                + f"; the largest context was {approx(count(s.max_context_tokens), s.estimated)} tokens.")
    row = next((r for r in report.turns if r.turn == c.turn), None)
    cut = row is not None and row.finish_reason == "length"
    what = {"truncation": "the server silently truncated the conversation",
            "context_overflow": "the answer was cut when the context window filled" if cut
            else "the request overflowed the context window",
            "timeout": "the server stalled (timeout)",
            "empty": "the server answered with an empty stream"}.get(c.reason, f"the turn failed ({c.reason})")
    last = f"; the last good turn held {count(c.last_ok_context_tokens)} tokens" if c.last_ok_context_tokens else ""
    # the server's own words on a refused request come before any count of the client's
    over, server = c.over_window_tokens, c.overflow_tokens
    counted = f"the server counted {server:,} tokens" if server else ""
    if over:
        where = f": {counted + ', ' if counted else ''}over the {over:,}-token window"
    else:
        where = f": {counted}" if counted else f" at about {count(c.context_tokens)} context tokens"
    ours = last or not (over or counted)       # a size of the report's own unit is given
    unit = " (client estimates)" if s.estimated and ours else ""
    return f"Ceiling at turn {c.turn}: {what}{where}{last}{unit}."


def memory_lines(m: Memory | None) -> list[tuple[str, str]]:
    if not m:
        return []
    out = []
    window = f"; the server advertises {count(m.advertised_window_tokens)}" if m.advertised_window_tokens else ""
    if m.rounds:
        eff, rel = m.effective_context_tokens, m.effective_context_relative_tokens
        out.append(("Recall", f"{plural(m.probes_counted, 'probe')} of facts at least {m.min_fact_age_turns} "
                              f"turns old in {plural(len(m.rounds), 'round')}, mean {m.recall_mean:.0%}, "
                              f"first round {m.first_round_recall:.0%}; "
                              + (f"effective context {eff:,} tokens (recall >= 90%)" if eff
                                 else "recall never reached 90%")
                              + (f", {rel:,} (>= 85% of the first round)" if rel else "")
                              + window))
    elif m.probes:
        out.append(("Recall", f"no probe asked a fact at least {m.min_fact_age_turns} turns old "
                              "(--min-fact-age): no effective context" + window))
    if m.by_distance:
        out.append(("By distance", _bands(m.by_distance, lambda a, b: f"{a // 1000:.0f}-{b // 1000:.0f}k"
                                          if b else f">={a // 1000:.0f}k", "tokens since stated")))
        out.append(("By depth", _bands(m.by_depth, lambda a, b: f"{a:.1f}-{b or 1:.1f}",
                                       "0 = start of the context")))
    if m.rule_checked_turns:
        broke = m.rule_first_broken
        out.append(("Rule", f"kept in {m.rule_kept_turns} of {plural(m.rule_checked_turns, 'answer')} judged"
                            + (f"; first broken at turn {broke.turn} ({count(broke.context_tokens)} tokens)"
                               if broke else "")
                            + (f"; {plural(m.hit_max_tokens, 'answer')} cut by max_tokens before the rule's "
                               "line could come, not judged" if m.hit_max_tokens else "")))
    out.append(("Degeneration", f"repeated 3-grams {cell(m.repeat_3gram_ratio_mean, 'repeat_3gram_ratio_mean')} "
                                f"on average; {plural(m.empty_answers, 'empty answer')}; "
                                f"{plural(m.hit_max_tokens, 'answer')} cut by max_tokens"))
    return out


def _bands(rows: list[Band], name, unit: str) -> str:
    return "; ".join(f"{name(b.from_, b.to)} {b.recall:.0%} ({b.probes})" for b in rows) + f" [{unit}]"


def history_sentence(reports: list[RunReport]) -> str:
    """Whether the compared runs were sent the same history (lalm-chat --history)."""
    sources = [r.run.settings.history if r.run else None for r in reports]
    if all(sources) and len({s.sha256 for s in sources if s}) == 1:
        s = sources[0]
        assert s is not None
        # the system message and the standing rule are in every request too
        framed = {json.dumps([r.run.settings.system, r.run.settings.rule_text]) for r in reports if r.run}
        return (f"shared: {'both' if len(reports) == 2 else 'all'} runs were sent the answers of run "
                f"{s.run_id} ({s.model or '?'}, sha256 {s.sha256[:12]}), "
                + ("the same messages at every turn they measured" if len(framed) == 1 else
                   "but not the same messages: their system message or standing rule (--probe-every) differ"))
    return "not shared: " + "; ".join(
        f"run {r.run_id} over " + (f"the answers of run {s.run_id} (sha256 {s.sha256[:12]})" if s
                                   else "its own answers")
        for r, s in zip(reports, sources))
