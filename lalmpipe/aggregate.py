"""Aggregate one run's records into its typed report (lalmpipe.results): pure functions,
no clock, no I/O. Per-turn numbers come from lalmpipe.measure; here they are summed up.
"""
from __future__ import annotations

import bisect
from typing import Callable, Iterable, Sequence

import msgspec

from .recall import read
from .records import Metrics, Recall, Run
from .stats import mean, percentile, r3, r6, sd, slope
from .inference import memory_curve, slope_interval, wilson
from .results import (Band, Ceiling, Cell, Depth, Memory, MemoryFit, Reasoning, Round, RuleBreak, RunReport, Share,
                      SpeedBand, Summary, Tier)
from .vocab import CLIENT_CONTEXT, CountSource, ErrorKind, Status

# a fact asked fewer turns than this after it was stated does not count toward the effective context
MIN_FACT_AGE_TURNS = 20
# distance bands in tokens (each up to the next edge), and depth bands (0 = start of the context)
DISTANCE_EDGES = (0, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000)
DEPTH_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8)


# ---- the records of a run, in one unit ----

def server_counted(row: Metrics | Recall) -> bool:
    """Tell if a row's context size is the server's count (a record from before
    `context_tokens_source`: if it has one at all)."""
    source = getattr(row, "context_tokens_source", None)
    return source == CountSource.SERVER if source else row.context_tokens is not None


def in_unit(row, estimated: bool):
    """The row with its context size in a report's one unit: the client's estimate,
    or the server's count; in the server's unit, a count the server did not make is unknown."""
    if estimated:
        if isinstance(row, Metrics):
            return msgspec.structs.replace(row, context_tokens=row.context_tokens_est, context_tokens_source=(
                None if row.context_tokens_est is None else CountSource.ESTIMATE))
        return msgspec.structs.replace(row, context_tokens=row.context_tokens_est)
    if isinstance(row, Recall) or server_counted(row):
        return row
    guessed = row.prompt_tokens_source == CountSource.ESTIMATE
    return msgspec.structs.replace(
        row, context_tokens=None, context_tokens_source=None,
        prompt_tokens=None if guessed else row.prompt_tokens,
        prompt_tokens_source=None if guessed else row.prompt_tokens_source,
        completion_tokens=None if row.tokens_source == CountSource.TIKTOKEN else row.completion_tokens)


def analyse(run: Run | None, rows: list[Metrics], recalls: list[Recall],
            min_fact_age: int = MIN_FACT_AGE_TURNS) -> RunReport:
    """One run's report. Its context sizes are all the server's counts, or, where the
    server did not count every turn it answered, all the client's cl100k estimates."""
    window = run.server.context_window if run else None
    estimated = not all(server_counted(r) for r in rows if r.status == Status.OK)
    rows = [in_unit(r, estimated) for r in rows]
    recalls = [in_unit(r, estimated) for r in recalls]
    return RunReport(run=run, summary=summarize(rows, estimated), reasoning=reasoning_summary(rows),
                     tiers=by_tier(rows), ceiling=ceiling(rows, window, estimated),
                     memory=memory(rows, recalls, window, min_fact_age),
                     depths=depths(rows, recalls, dict(run.settings.depths or []) if run else None),
                     turns=rows)


# ---- speed and tokens ----

def cache_counted(r: Metrics) -> bool:
    """Tell if a turn's cache share can be known: the server counted its prompt and
    its cached tokens (an estimate has no cache beside it)."""
    return r.cached_tokens is not None and r.prompt_tokens_source != CountSource.ESTIMATE


def _ok(rows: Iterable[Metrics]) -> list[Metrics]:
    return [r for r in rows if r.status == Status.OK]


def summarize(rows: list[Metrics], estimated: bool = False) -> Summary:
    """Aggregate one run's metrics records."""
    ok = _ok(rows)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tps = [r.decode_tps for r in ok if r.decode_tps is not None]
    ctx = [r.context_tokens for r in rows if r.context_tokens is not None]
    cached = [r for r in rows if cache_counted(r)]
    return Summary(
        turns=len(rows), ok=len(ok),
        errors=sum(1 for r in rows if r.status == Status.ERROR),
        interrupted=sum(1 for r in rows if r.status == Status.INTERRUPTED),
        truncated=sum(1 for r in rows if r.truncated),
        ttft_mean_s=r6(mean(ttft)), ttft_p50_s=r6(percentile(ttft, 50)), ttft_p95_s=r6(percentile(ttft, 95)),
        decode_tps_mean=r3(mean(tps)),
        prompt_tokens_total=_total(rows, "prompt_tokens"),
        completion_tokens_total=_total(rows, "completion_tokens"),
        reasoning_tokens_total=_total(rows, "reasoning_tokens"),
        cached_tokens_total=_total(rows, "cached_tokens"),
        cache_prompt_tokens_total=_total(cached, "prompt_tokens"),
        cache_hit_ratio=r3(_ratio(_total(cached, "cached_tokens"), _total(cached, "prompt_tokens"))),
        max_context_tokens=max(ctx) if ctx else None,
        duration_s=r6(sum(r.e2e_s or r.ttft_s or 0.0 for r in rows)),
        **degradation(ok),
        context_source=CLIENT_CONTEXT if estimated else CountSource.SERVER,
        by_context=speed_bands(ok))


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _total(rows, key) -> int | None:
    vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
    return sum(vals) if vals else None


def degradation(ok: list[Metrics]) -> dict:
    """How speed changes as the context grows."""
    pts = [(r.context_tokens, r.ttft_s) for r in ok if r.context_tokens is not None and r.ttft_s is not None]
    k = slope([p[0] for p in pts], [p[1] for p in pts])
    tps = [(r.context_tokens, r.decode_tps) for r in ok if r.decode_tps]
    # the first and last three turns, or, with fewer than six, halves that do not overlap
    n = min(3, max(len(tps) // 2, 1))
    start = mean([t for _, t in tps[:n]]) if tps else None
    end = mean([t for _, t in tps[-n:]]) if len(tps) > 1 else None
    half = next((c for c, t in tps if start and t < start / 2), None)
    sized = [(c, t) for c, t in tps if c is not None]      # the slope needs each turn's context
    decode_k = slope([c for c, _ in sized], [t for _, t in sized])
    return {"ttft_slope_s_per_1k_tokens": r6(k * 1000 if k is not None else None),
            "decode_tps_start": r3(start), "decode_tps_end": r3(end),
            "decode_ratio_end_to_start": r3(end / start if start and end else None),
            "decode_half_speed_at_context_tokens": half,
            "ttft_slope_ci95": _per_1k(slope_interval([p[0] for p in pts], [p[1] for p in pts]), r6),
            "decode_slope_tps_per_1k_tokens": r3(decode_k * 1000 if decode_k is not None else None),
            "decode_slope_ci95": _per_1k(slope_interval([c for c, _ in sized], [t for _, t in sized]), r3)}


def _per_1k(interval: tuple[float, float] | None, rounded) -> list[float] | None:
    return None if interval is None else [rounded(interval[0] * 1000), rounded(interval[1] * 1000)]


def _quartiles(values: list[float], rounded) -> list[float] | None:
    if not values:
        return None
    return [rounded(percentile(values, 25)), rounded(percentile(values, 50)), rounded(percentile(values, 75))]


def by_context(rows: Iterable[Metrics]) -> dict[int, list[Metrics]]:
    """The answered turns by band of context size (the distance bands' edges), in band order."""
    bands: dict[int, list[Metrics]] = {}
    for r in _ok(rows):
        b = band_of(r.context_tokens, DISTANCE_EDGES)
        if b is not None:
            bands.setdefault(b, []).append(r)
    return dict(sorted(bands.items()))


def band_edges(b: int) -> tuple[int, int | None]:
    """A context band's lower edge and upper edge (None for the last)."""
    return DISTANCE_EDGES[b], DISTANCE_EDGES[b + 1] if b + 1 < len(DISTANCE_EDGES) else None


def speed_bands(ok: list[Metrics]) -> list[SpeedBand]:
    """Per band of context size, the turns in it and the quartiles of their TTFT, prefill
    and decode speed: the spread behind each figure."""
    return [SpeedBand(from_=band_edges(b)[0], to=band_edges(b)[1], turns=len(rs),
                      ttft_s=_quartiles([r.ttft_s for r in rs if r.ttft_s is not None], r6),
                      prefill_tps=_quartiles([r.prefill_tps for r in rs if r.prefill_tps is not None], r3),
                      decode_tps=_quartiles([r.decode_tps for r in rs if r.decode_tps is not None], r3))
            for b, rs in by_context(ok).items()]


def reasoning_summary(rows: list[Metrics]) -> Reasoning:
    ok = _ok(rows)
    with_r = [r for r in ok if r.has_reasoning]
    return Reasoning(
        by_tier={t.tier: t.reasoning_token_share for t in by_tier(rows)},
        turns_with_reasoning=len(with_r), share=r3(len(with_r) / len(ok)) if ok else None,
        reasoning_tokens_mean=r3(mean([r.reasoning_tokens for r in with_r if r.reasoning_tokens is not None])),
        reasoning_s_mean=r6(mean([r.reasoning_s for r in with_r if r.reasoning_s is not None])))


def by_tier(rows: list[Metrics]) -> list[Tier]:
    """Per tier, in conversation order: speed and reasoning share."""
    tiers: dict[str, list[Metrics]] = {}
    for r in rows:
        tiers.setdefault(r.tier or "?", []).append(r)
    out = []
    for tier, rs in tiers.items():
        ok = _ok(rs)
        out.append(Tier(
            tier=tier, turns=len(rs), ok=len(ok),
            ttft_mean_s=r6(mean([r.ttft_s for r in ok if r.ttft_s is not None])),
            decode_tps_mean=r3(mean([r.decode_tps for r in ok if r.decode_tps])),
            max_context_tokens=max((r.context_tokens for r in rs if r.context_tokens is not None), default=None),
            reasoning_turn_share=r3(sum(1 for r in ok if r.has_reasoning) / len(ok)) if ok else None,
            reasoning_token_share=r3(_ratio(_total(ok, "reasoning_tokens"), _total(ok, "completion_tokens")))))
    return out


def ceiling(rows: list[Metrics], window: int | None = None, estimated: bool = False) -> Ceiling | None:
    """The first turn where the context broke: an overflow, a stall, a silent truncation.

    Its size is in the unit of the run's other context figures: the server's
    counts, or, `estimated`, the client's cl100k counts; never a mix. A request
    refused as too long for a known window went "over the window", whatever
    either count says; the size the server gave it in refusing it is kept as
    `overflow_tokens`. Other failures (a refused connection, an HTTP 500) say
    nothing about the context and are counted in the summary, not here.
    """
    last_ok = None
    for r in rows:
        failed = r.status == Status.ERROR and r.error_kind is not None and ErrorKind(r.error_kind).ends_context
        if failed or r.truncated:
            ctx = r.context_tokens
            if ctx is None and not estimated and r.prompt_tokens_source \
                    and CountSource(r.prompt_tokens_source).is_whole_prompt:
                ctx = r.prompt_tokens
            # an answer cut by a full window did fit; only a refused request went over it
            refused = failed and r.error_kind == ErrorKind.CONTEXT_OVERFLOW and r.finish_reason != "length"
            return Ceiling(turn=r.turn, context_tokens=ctx,
                           reason=str(r.error_kind) if failed else "truncation",
                           last_ok_context_tokens=last_ok, over_window_tokens=window if refused else None,
                           overflow_tokens=r.overflow_tokens)
        if r.status == Status.OK and r.context_tokens is not None:
            last_ok = r.context_tokens
    return None


# ---- memory: the planted facts, the rule, the answers' health ----

def memory(rows: list[Metrics], recalls: list[Recall], window: int | None,
           min_fact_age: int = MIN_FACT_AGE_TURNS) -> Memory | None:
    """Recall of planted facts, the rule, and degeneration, against context size.

    The effective context counts only facts stated at least `min_fact_age`
    turns before they were asked, so that a fact just said cannot prop it up;
    recall by distance and by depth counts every probe.
    """
    ok = _ok(rows)
    ruled = [r for r in ok if r.rule_kept is not None]
    broken = next((r for r in ruled if not r.rule_kept), None)
    repeat, empty = answer_health(ok)
    if not recalls and not ruled:
        return None
    aged = [r for r in recalls if r.turns_since_stated is None or r.turns_since_stated >= min_fact_age]
    answered = [r for r in recalls if r.status == Status.OK]
    at = {r.turn: r.context_tokens for r in rows}
    rs = rounds(aged, at)
    first = rs[0].recall if rs else None
    return Memory(
        rounds=rs, probes=len(recalls), min_fact_age_turns=min_fact_age, probes_counted=len(aged),
        recall_mean=r3(mean([r.recall for r in rs])), first_round_recall=first,
        effective_context_tokens=effective_context(rs, 0.9) if rs else None,
        effective_context_ci95=[effective_context(rs, 0.9, end=0), effective_context(rs, 0.9, end=1)] if rs else None,
        effective_context_relative_tokens=effective_context(rs, 0.85 * first) if first else None,
        advertised_window_tokens=window,
        by_distance=bands(recalls, lambda r: r.tokens_since_stated, DISTANCE_EDGES),
        by_depth=bands(recalls, lambda r: r.depth, DEPTH_EDGES),
        grid=grid(recalls, at),
        rule_kept_turns=sum(1 for r in ruled if r.rule_kept) if ruled else None,
        rule_checked_turns=len(ruled) if ruled else None,
        rule_first_broken=None if broken is None else RuleBreak(turn=broken.turn,
                                                                 context_tokens=broken.context_tokens),
        repeat_3gram_ratio_mean=repeat,
        empty_answers=empty,
        hit_max_tokens=sum(1 for r in ok if r.hit_max_tokens),
        overall=Share(**_share(aged)) if aged else None,
        fit=MemoryFit(**memory_curve([r.tokens_since_stated for r in recalls], [r.correct for r in recalls])),
        probes_answered=len(answered), probes_without_number=sum(1 for r in answered if not read(r.answer or "")))


def answer_health(ok: list[Metrics]) -> tuple[float | None, int]:
    """The answered turns' mean share of repeated word 3-grams, and how many answers were empty."""
    repeat = [r.repeat_3gram_ratio for r in ok if r.repeat_3gram_ratio is not None]
    return r3(mean(repeat)), sum(1 for r in ok if r.empty_answer)


def _share(rs: list[Recall]) -> dict:
    """Probes recalled of those asked, as every share of the report gives it."""
    recalled = sum(bool(r.correct) for r in rs)
    return {"probes": len(rs), "recall": round(recalled / len(rs), 4), "n": len(rs), "recalled": recalled,
            "ci95": wilson(recalled, len(rs))}


def _by_round(recalls: list[Recall]) -> dict[int, list[Recall]]:
    by_turn: dict[int, list[Recall]] = {}
    for r in recalls:
        by_turn.setdefault(r.after_turn, []).append(r)
    return by_turn


def rounds(recalls: list[Recall], at: dict[int, int | None] | None = None) -> list[Round]:
    """Group recall records by the turn they followed: score and context per round. A
    round's context is that of the turn it followed (`at`: turn -> context), where known:
    the probes' own requests add their question, which no turn of the run ever held."""
    return [Round(after_turn=turn, **_share(rs), context_tokens=_round_context(rs, at))
            for turn, rs in sorted(_by_round(recalls).items())]


def _round_context(rs: list[Recall], at: dict[int, int | None] | None) -> int | None:
    """A round's context: its turn's (`at`), else the largest of its probes' own."""
    known = (at or {}).get(rs[0].after_turn)
    ctx = [r.context_tokens for r in rs if r.context_tokens is not None]
    return known if known is not None else max(ctx) if ctx else None


def effective_context(rows: list[Round], threshold: float, end: int | None = None) -> int | None:
    """The largest context up to which every probe round scores at least `threshold`; with
    `end` 0 or 1, every round's interval's low end (surely held) or high end (plausibly held)."""
    best = None
    for r in rows:
        share = r.recall if end is None or r.ci95 is None else r.ci95[end]
        if share < threshold:
            break
        best = r.context_tokens if r.context_tokens is not None else best
    return best


def band_of(value: float | None, edges: Sequence[float]) -> int | None:
    """Index of the band holding value: the last edge at or below it (the first band
    takes what lies below its edge)."""
    return None if value is None else max(bisect.bisect_right(edges, value) - 1, 0)


def bands(recalls: list[Recall], value_of: Callable[[Recall], float | None],
          edges: Sequence[float]) -> list[Band]:
    """Recall per band of some distance, for the bands probed."""
    by_band: dict[int, list[Recall]] = {}
    for r in recalls:
        b = band_of(value_of(r), edges)
        if b is not None:
            by_band.setdefault(b, []).append(r)
    return [Band(from_=edges[b], to=edges[b + 1] if b + 1 < len(edges) else None, **_share(rs))
            for b, rs in sorted(by_band.items())]


def grid(recalls: list[Recall], at: dict[int, int | None] | None = None) -> list[Cell]:
    """Recall per probe round and depth band: the needle-in-a-haystack picture."""
    cells: dict[tuple[int, int], list[Recall]] = {}
    for r in recalls:
        b = band_of(r.depth, DEPTH_EDGES)
        if b is not None:
            cells.setdefault((r.after_turn, b), []).append(r)
    ctx = {turn: _round_context(rs, at) for turn, rs in _by_round(recalls).items()}
    return [Cell(after_turn=t, context_tokens=ctx[t], depth_from=DEPTH_EDGES[b], **_share(rs))
            for (t, b), rs in sorted(cells.items())]


def depths(rows: list[Metrics], recalls: list[Recall], targets: dict[int, int] | None = None) -> list[Depth]:
    """One row per measured turn, in the form of llama-bench's depth runs: the
    context it was sent at, its prefill and decode speed, the share of the
    prompt the server's cache served, its reasoning, and the recall of the
    probes asked after it (every fact stated so far, whatever its age). A turn
    sent several times (--repeat) is one row: the mean and sd over its repeats. `targets`:
    prompt id -> the depth in tokens it was chosen for (lalm-chat --depths)."""
    asked = _by_round(recalls)
    return [_depth(rs, asked.get(rs[-1].turn, []), (targets or {}).get(rs[-1].prompt_id or 0))
            for rs in _repeats(_ok(rows))]


def _repeats(ok: list[Metrics]) -> list[list[Metrics]]:
    """The rows in order, the repeats of one prompt (lalm-chat --repeat) together."""
    groups: dict[tuple, list[Metrics]] = {}
    for r in ok:
        groups.setdefault(("turn", r.turn) if r.repeat is None else ("prompt", r.prompt_id), []).append(r)
    return list(groups.values())


def _depth(rs: list[Metrics], probes: list[Recall], target: int | None) -> Depth:
    last = rs[-1]       # the sending after which the probes were asked
    ttft, prefill, decode = ([getattr(r, k) for r in rs if getattr(r, k) is not None]
                             for k in ("ttft_s", "prefill_tps", "decode_tps"))
    cached = [r for r in rs if cache_counted(r)]
    reasoning = [r.reasoning_tokens for r in rs if r.reasoning_tokens is not None]
    recalled = sum(1 for p in probes if p.correct)
    return Depth(turn=last.turn, prompt_id=last.prompt_id, context_tokens=last.context_tokens,
                 context_tokens_source=last.context_tokens_source, context_tokens_est=last.context_tokens_est,
                 ttft_s=r6(mean(ttft)), prefill_tps=r3(mean(prefill)),
                 cached_share=r3(_ratio(_total(cached, "cached_tokens"), _total(cached, "prompt_tokens")))
                 if cached else None,
                 decode_tps=r3(mean(decode)),
                 reasoning_tokens=round(sum(reasoning) / len(reasoning)) if reasoning else None,
                 probes=len(probes), recalled=recalled, recall_ci95=wilson(recalled, len(probes)),
                 ttft_sd=r6(sd(ttft)), prefill_tps_sd=r3(sd(prefill)), decode_tps_sd=r3(sd(decode)),
                 repeats=len(rs), target_tokens=target)

