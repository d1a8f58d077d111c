"""The report's findings in sentences, for people: the summary of a run, its ceiling, its
memory, and whether compared runs were sent the same history."""
from __future__ import annotations

import json

from ..results import Band, Memory, RunReport, Verdict
from ..vocab import Status
from ..aggregate import answer_health
from ..configs import differences
from ..recall import LOOPING_REPEAT, NO_NUMBER_SHARE
from .columns import approx, cell, count, heading, plural, share, span


def summary_lines(report: RunReport) -> list[tuple[str, str]]:
    """The summary as (label, sentence) pairs."""
    s, rz = report.summary, report.reasoning
    f = lambda x, spec="": "?" if x is None else format(x, spec)  # noqa: E731
    est, half = s.estimated, s.decode_half_speed_at_context_tokens
    lines = [("TTFT", f"mean {f(s.ttft_mean_s, '.3f')} s, p50 {f(s.ttft_p50_s, '.3f')} s, "
                      f"p95 {f(s.ttft_p95_s, '.3f')} s; "
                      f"{f(s.ttft_slope_s_per_1k_tokens, '+.3f')} s per 1,000 context tokens"
                      + (f" (95 %: {span(s.ttft_slope_ci95, '.3f')})" if s.ttft_slope_ci95 else "")),
             ("Decode", f"mean {f(s.decode_tps_mean, '.1f')} tok/s; {f(s.decode_tps_start, '.1f')} "
                        f"at the start, {f(s.decode_tps_end, '.1f')} at the end "
                        f"(x{f(s.decode_ratio_end_to_start, '.2f')})"
                        + (f"; {s.decode_slope_tps_per_1k_tokens:+.1f} tok/s per 1,000 context tokens (95 %: "
                           f"{span(s.decode_slope_ci95, '.1f')})" if s.decode_slope_ci95 else "")
                        + (f"; below half speed from {approx(count(half), est)} context tokens" if half else ""))]
    if len(s.by_context) > 1:
        lines.append(("By context", "; ".join(_speed_band(b) for b in s.by_context)
                      + " [median (quartiles), turns; context tokens]"))
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
    health = health_sentence(report)
    return lines + ([("Health", health)] if health else []) + memory_lines(report.memory)


def _speed_band(b) -> str:
    name = f"{b.from_ // 1000}-{b.to // 1000}k" if b.to else f">={b.from_ // 1000}k"
    parts = [f"{label} {q[1]:{fmt}} ({q[0]:{fmt}}-{q[2]:{fmt}})"
             for label, q, fmt in (("TTFT", b.ttft_s, ".2f"), ("decode", b.decode_tps, ".1f")) if q]
    return f"{name}: " + ", ".join(parts) + f", {plural(b.turns, 'turn')}"


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
        eff, rel, first = m.effective_context_tokens, m.effective_context_relative_tokens, m.rounds[0]
        overall = f"recalled {share(m.overall.recall, m.overall.n, m.overall.ci95)}, " if m.overall else ""
        out.append(("Recall", f"{plural(m.probes_counted, 'probe')} of facts at least {m.min_fact_age_turns} "
                              f"turns old in {plural(len(m.rounds), 'round')}: {overall}mean of the rounds "
                              f"{m.recall_mean:.0%}, first round {share(first.recall, first.n, first.ci95)}; "
                              + (f"effective context {eff:,} tokens (recall >= 90%)" if eff
                                 else "recall never reached 90%")
                              + (f" (95 %: {_effective_span(m.effective_context_ci95)})"
                                 if eff and m.effective_context_ci95 else "")
                              + (f", {rel:,} (>= 85% of the first round)" if rel else "")
                              + window))
    elif m.probes:
        out.append(("Recall", f"no probe asked a fact at least {m.min_fact_age_turns} turns old "
                              "(--min-fact-age): no effective context" + window))
    if m.fit and m.fit.probes >= 5:
        out.append(("Memory curve", _fit_sentence(m)))
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
                                f"{plural(m.hit_max_tokens, 'answer')} cut by max_tokens"
                                + (f"; {m.probes_without_number} of {plural(m.probes_answered, 'probe answer')} "
                                   "give no number" if m.probes_answered else "")))
    return out


def _effective_span(ci: list[int | None]) -> str:
    """The effective context's interval: where every round surely, and plausibly, held 90 %."""
    low, high = ci
    return f"{'none' if low is None else f'{low:,}'} to {'none' if high is None else f'{high:,}'} tokens"


def _bands(rows: list[Band], name, unit: str) -> str:
    return "; ".join(f"{name(b.from_, b.to)} {share(b.recall, b.n, b.ci95)}" for b in rows) + f" [{unit}]"


def _fit_sentence(m: Memory) -> str:
    """Where the fitted recall falls, and which figure is which."""
    fit = m.fit
    assert fit is not None
    parts = []
    for level, d, ci in ((90, fit.distance_90_tokens, fit.distance_90_ci95),
                         (50, fit.distance_50_tokens, fit.distance_50_ci95)):
        if d is None:
            nearest = m.by_distance[0] if m.by_distance else None
            parts.append(f"below {level} % already at the nearest distances measured" if nearest
                         and nearest.recall < level / 100 else f"below {level} %: not within the distances measured")
            continue
        bounded = ci is not None and None not in ci
        parts.append(f"below {level} % at {d:,} tokens back"
                     + (f" (95 %: {span(ci, ',')})" if bounded else " (95 %: not bounded by these probes)"))
    return ("recall against the distance to the fact, fitted as never rising (" + str(fit.probes)
            + " probes): " + "; ".join(parts) + ". This is how far back the model remembers; the effective "
            "context above is how large a conversation it held while it still did")


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


def verdict_lines(verdicts: list[Verdict], reports: list[RunReport]) -> list[str]:
    """Each tested difference in a line: the figure, where, each run by its name with its
    value ("qwen 75% vs smollm 17%"; by run id where names repeat) and the verdict."""
    names = [r.name for r in reports]
    called = {r.run_id: r.name if names.count(r.name) == 1 else f"run {r.run_id}" for r in reports}

    def value(figure: str, v) -> str:
        return "?" if v is None else f"{v:.0%}" if figure == "recall" else cell(v, figure)
    return [f"{heading(v.figure)} {v.where}: "
            + " vs ".join(f"{called.get(run, f'run {run}')} {value(v.figure, x)}" for run, x in zip(v.runs, v.values))
            + f": {v.verdict}" for v in verdicts]


VERDICT_TITLE = ("Differences (each run against the first; recall by Fisher's exact test, speed by "
                 "Mann-Whitney's U over the turns in the same context band; p < 0.05 is called a difference)")


def settings_sentence(reports: list[RunReport]) -> str | None:
    """What differs between the project's server settings of the runs compared (None when no
    run knows them)."""
    known = [r.server_settings for r in reports]
    if not any(known):
        return None
    if not all(known):
        return "only some runs were made on the project's own server: their settings cannot all be compared"
    differ = differences([k for k in known if k])
    return ("the runs differ in: " + ", ".join(differ)) if differ else "the runs were made with the same settings"


def health_sentence(report: RunReport) -> str | None:
    """The answers' health in words, when it is poor enough to read every other figure by:
    answers that loop or are empty, or answers to the probes that give no number at all."""
    ok = [r for r in report.turns if r.status == Status.OK]
    repeat, empty = answer_health(ok)
    if ok and repeat is not None and (repeat > LOOPING_REPEAT or empty / len(ok) > 0.25):
        what = "the answers loop on themselves" if repeat > LOOPING_REPEAT else "many answers are empty"
        return (f"{what} (repeated 3-grams {repeat:.3f}, {plural(empty, 'empty answer')} of {len(ok)}): the "
                "model's text is broken, and every other figure, recall above all, measures broken text")
    m = report.memory
    if m and m.probes_answered >= MIN_PROBES_JUDGED and m.probes_without_number > NO_NUMBER_SHARE * m.probes_answered:
        return (f"most answers to the probes give no number at all ({m.probes_without_number} of "
                f"{m.probes_answered}, though each asks for one): the model's text does not answer, and "
                "recall measures that, not memory")
    return None


# fewer probes than this say nothing of how the answers answer
MIN_PROBES_JUDGED = 5
