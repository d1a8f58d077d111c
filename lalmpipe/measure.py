"""Derive every per-turn and per-run number: pure functions, no clock, no I/O."""
from __future__ import annotations

import math
import re
from typing import Sequence

import msgspec

from .outcome import window_full
from .reasoning import StreamView
from .records import Metrics, Recall
from .recall import DEPTH_EDGES, DISTANCE_EDGES, bands, effective_context, grid, rounds

# Prompt growth below this share of the conversation's growth means the
# server saw less than was sent (tokenizers differ, so not much stricter).
TRUNCATION_GROWTH_SHARE = 0.5
TRUNCATION_MIN_GROWTH = 16


def r6(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the q-th percentile (0-100), linear between closest ranks."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def decode_tps(tokens: int | None, t_first: float | None, t_last: float | None) -> float | None:
    """Tokens after the first token chunk per second of decoding."""
    if tokens is None or t_first is None or t_last is None or t_last <= t_first or tokens < 2:
        return None
    return (tokens - 1) / (t_last - t_first)


def timing(view: StreamView) -> dict:
    """Compute times from the token chunks of one stream."""
    times = [t for t, _, _ in view.tokens]
    first_content = next((t for t, _, c in view.tokens if c.strip()), None)
    r_times = [t for t, is_r, _ in view.tokens if is_r]
    itl = gaps(times)
    return {
        "ttft_s": times[0] if times else None,
        "ttft_content_s": first_content,
        "e2e_s": times[-1] if times else None,
        "itl_p50_s": percentile(itl, 50),
        "itl_p95_s": percentile(itl, 95),
        "itl_max_s": max(itl) if itl else None,
        "reasoning_s": (r_times[-1] - r_times[0]) if view.reasoning and r_times else None,
    }


def token_counts(usage: dict | None, reasoning_count: int | None,
                 content_count: int | None) -> dict:
    """Prefer the server's counts; with only its completion count, split that
    by the client's reasoning/content counts; without it, the client's counts."""
    usage = usage or {}
    details = usage.get("completion_tokens_details") or {}
    completion = usage.get("completion_tokens")
    counts = {"prompt_tokens": usage.get("prompt_tokens"), "completion_tokens": completion}
    if details.get("reasoning_tokens") is not None and completion is not None:
        reasoning = details["reasoning_tokens"]
        return {**counts, "reasoning_tokens": reasoning, "content_tokens": completion - reasoning,
                "tokens_source": "server"}
    if reasoning_count is None:
        return {**counts, "reasoning_tokens": None, "content_tokens": None, "tokens_source": None}
    if completion is None:
        return {**counts, "reasoning_tokens": reasoning_count, "content_tokens": content_count,
                "tokens_source": CLIENT_TOKENS}
    client = reasoning_count + content_count
    reasoning = round(completion * reasoning_count / client) if client else 0
    return {**counts, "reasoning_tokens": reasoning, "content_tokens": completion - reasoning,
            "tokens_source": "server+tiktoken"}


def cached_tokens(usage: dict | None, timings: dict | None) -> int | None:
    details = (usage or {}).get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        return details["cached_tokens"]
    return (timings or {}).get("cache_n")


def prefill_tps(prompt_tokens: int | None, cached: int | None, ttft_s: float | None) -> float | None:
    """Uncached prompt tokens per second of time to first token."""
    if prompt_tokens is None or not ttft_s:
        return None
    return (prompt_tokens - (cached or 0)) / ttft_s


# a refused request's size as llama.cpp and some other servers put it in the error
PROMPT_SIZE = (r'"n_prompt_tokens"\s*:\s*(\d+)', r"request \((\d+) tokens\)", r"prompt is too long: (\d+) tokens")


def overflow_prompt_tokens(body: str | None) -> int | None:
    """The prompt size an overflow error reports: llama.cpp's n_prompt_tokens,
    vLLM's "(N in the messages", or a "request (N tokens)" message."""
    return _first_number(body, (*PROMPT_SIZE, r"(\d+) in the messages"))


def overflow_tokens(body: str | None) -> int | None:
    """The size a server gave the request it refused as too long for its window:
    llama.cpp's n_prompt_tokens, vLLM's "at least N input tokens" (older builds:
    "you requested M tokens", the messages and max_tokens together)."""
    return _first_number(body, (*PROMPT_SIZE, r"at least (\d+) input tokens", r"you requested (\d+) tokens"))


def _first_number(text: str | None, patterns: tuple[str, ...]) -> int | None:
    """The number the first matching pattern captures."""
    for pattern in patterns if text else ():
        m = re.search(pattern, text)
        if m:
            return int(m.group(1))
    return None


# whose a count is: the server's (its usage), or the client's own cl100k count of what
# was sent and received; `tokens_source` names the client's count of an answer "tiktoken"
SERVER, ESTIMATE, CLIENT_TOKENS = "server", "estimate", "tiktoken"


CLIENT_CONTEXT = "client (cl100k estimate)"   # a report's context unit when the server did not count every turn


def in_estimates(summary: dict) -> bool:
    """Tell if a report's context sizes are the client's estimates (its summary's context_source)."""
    return summary["context_source"] != SERVER


def counted(server_count: int | None, estimate: int | None) -> tuple[int | None, str | None]:
    """Return a count and its source: the server's where it gave one, else the client's estimate."""
    if server_count is not None:
        return server_count, SERVER
    return estimate, None if estimate is None else ESTIMATE


def server_counted(row: Metrics | Recall) -> bool:
    """Tell if a row's context size is the server's count (a record from before
    `context_tokens_source`: if it has one at all)."""
    source = getattr(row, "context_tokens_source", None)
    return source == SERVER if source else row.context_tokens is not None


def in_unit(row: Metrics | Recall, estimated: bool) -> Metrics | Recall:
    """The row with its context size in a report's one unit: the client's estimate,
    or the server's count; in the server's unit, a count the server did not make is unknown."""
    if estimated:
        swap = {"context_tokens": row.context_tokens_est}
        if isinstance(row, Metrics):
            swap["context_tokens_source"] = None if row.context_tokens_est is None else ESTIMATE
        return msgspec.structs.replace(row, **swap)
    if isinstance(row, Recall) or server_counted(row):
        return row
    return msgspec.structs.replace(
        row, context_tokens=None, context_tokens_source=None,
        prompt_tokens=None if row.prompt_tokens_source == ESTIMATE else row.prompt_tokens,
        prompt_tokens_source=None if row.prompt_tokens_source == ESTIMATE else row.prompt_tokens_source,
        completion_tokens=None if row.tokens_source == CLIENT_TOKENS else row.completion_tokens)


def generated_tokens(counts: dict, n_token_chunks: int) -> int:
    """Tokens generated this turn: server usage, else tiktoken, else chunks."""
    if counts["completion_tokens"] is not None:
        return counts["completion_tokens"]
    if counts["reasoning_tokens"] is not None:
        return counts["reasoning_tokens"] + (counts["content_tokens"] or 0)
    return n_token_chunks


def partial_prompt_count(prompt_tokens: int | None, request_growth: int | None,
                         prev_prompt_tokens: int | None) -> bool:
    """Tell if the server counted only the part of the prompt it had not cached.

    Ollama does so: 0, or about what was added since the last request, where
    the whole prompt was counted before. A truncating server's count stops
    near its window instead, far above what one turn adds.
    """
    if prompt_tokens is None:
        return False
    if prompt_tokens == 0:
        return True
    if prev_prompt_tokens is None or prompt_tokens >= prev_prompt_tokens:
        return False
    return request_growth is None or prompt_tokens <= PARTIAL_GROWTH_FACTOR * request_growth + PARTIAL_SLACK


# a count within this of one turn's growth is a count of the new part only
PARTIAL_GROWTH_FACTOR, PARTIAL_SLACK = 2.0, 64


def truncated(prompt_tokens: int | None, completion_tokens: int | None,
              prev_prompt_tokens: int | None, request_growth: int | None,
              window: int | None) -> bool:
    """Tell if the server saw less of the conversation than was sent.

    `request_growth` is how much the client-side count of the request grew
    since the previous successful turn's request.
    """
    if prompt_tokens is None:
        return False
    if prev_prompt_tokens is not None:
        if prompt_tokens < prev_prompt_tokens:
            return True
        grew = prompt_tokens - prev_prompt_tokens
        if (request_growth is not None and request_growth >= TRUNCATION_MIN_GROWTH
                and grew < TRUNCATION_GROWTH_SHARE * request_growth):
            return True
    return window_full(prompt_tokens, completion_tokens, window)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against xs."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


# ---- per-run aggregation (lalm-report) ----

# what counts as the context breaking (DESIGN: overflow, truncation, a stall);
# an empty 200 is how llama-cpp-python answers an over-long prompt
CEILING_KINDS = {"context_overflow", "timeout", "empty"}

# a fact asked fewer turns than this after it was stated does not count toward the effective context
MIN_FACT_AGE_TURNS = 20


def cache_counted(r: Metrics) -> bool:
    """Tell if a turn's cache share can be known: the server counted its prompt and
    its cached tokens (an estimate has no cache beside it)."""
    return r.cached_tokens is not None and r.prompt_tokens_source != ESTIMATE


def summarize(rows: list[Metrics]) -> dict:
    """Aggregate one run's metrics records."""
    ok = [r for r in rows if r.status == "ok"]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    tps = [r.decode_tps for r in ok if r.decode_tps is not None]
    ctx = [r.context_tokens for r in rows if r.context_tokens is not None]
    cached = [r for r in rows if cache_counted(r)]
    return {
        "turns": len(rows), "ok": len(ok),
        "errors": sum(1 for r in rows if r.status == "error"),
        "interrupted": sum(1 for r in rows if r.status == "interrupted"),
        "truncated": sum(1 for r in rows if r.truncated),
        "ttft_mean_s": r6(mean(ttft)), "ttft_p50_s": r6(percentile(ttft, 50)),
        "ttft_p95_s": r6(percentile(ttft, 95)),
        "decode_tps_mean": r3(mean(tps)),
        "prompt_tokens_total": _total(rows, "prompt_tokens"),
        "completion_tokens_total": _total(rows, "completion_tokens"),
        "reasoning_tokens_total": _total(rows, "reasoning_tokens"),
        "cached_tokens_total": _total(rows, "cached_tokens"),
        "cache_prompt_tokens_total": _total(cached, "prompt_tokens"),
        "cache_hit_ratio": r3(_ratio(_total(cached, "cached_tokens"), _total(cached, "prompt_tokens"))),
        "max_context_tokens": max(ctx) if ctx else None,
        "duration_s": r6(sum(r.e2e_s or r.ttft_s or 0.0 for r in rows)),
        **degradation(ok),
    }


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def _total(rows, key) -> int | None:
    vals = [getattr(r, key) for r in rows if getattr(r, key) is not None]
    return sum(vals) if vals else None


def degradation(ok: list[Metrics]) -> dict:
    """How speed changes as the context grows."""
    pts = [(r.context_tokens, r.ttft_s) for r in ok
           if r.context_tokens is not None and r.ttft_s is not None]
    k = slope([p[0] for p in pts], [p[1] for p in pts])
    tps = [(r.context_tokens, r.decode_tps) for r in ok if r.decode_tps]
    start = mean([t for _, t in tps[:3]]) if tps else None
    end = mean([t for _, t in tps[-3:]]) if tps else None
    half = next((c for c, t in tps if start and t < start / 2), None)
    return {"ttft_slope_s_per_1k_tokens": r6(k * 1000 if k is not None else None),
            "decode_tps_start": r3(start), "decode_tps_end": r3(end),
            "decode_ratio_end_to_start": r3(end / start if start and end else None),
            "decode_half_speed_at_context_tokens": half}


def reasoning_summary(rows: list[Metrics]) -> dict:
    ok = [r for r in rows if r.status == "ok"]
    with_r = [r for r in ok if r.has_reasoning]
    return {
        "by_tier": {t["tier"]: t["reasoning_token_share"] for t in by_tier(rows)},
        "turns_with_reasoning": len(with_r),
        "share": r3(len(with_r) / len(ok)) if ok else None,
        "reasoning_tokens_mean": r3(mean([r.reasoning_tokens for r in with_r
                                          if r.reasoning_tokens is not None])),
        "reasoning_s_mean": r6(mean([r.reasoning_s for r in with_r
                                     if r.reasoning_s is not None])),
    }


def ceiling(rows: list[Metrics], window: int | None = None, estimated: bool = False) -> dict | None:
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
        failed = r.status == "error" and r.error_kind in CEILING_KINDS
        if failed or r.truncated:
            ctx = r.context_tokens
            if ctx is None and not estimated and r.prompt_tokens_source == SERVER:
                ctx = r.prompt_tokens
            # an answer cut by a full window did fit; only a refused request went over it
            refused = failed and r.error_kind == "context_overflow" and r.finish_reason != "length"
            return {"turn": r.turn, "context_tokens": ctx,
                    "reason": "truncation" if not failed else r.error_kind,
                    "last_ok_context_tokens": last_ok, "over_window_tokens": window if refused else None,
                    "overflow_tokens": r.overflow_tokens}
        if r.status == "ok" and r.context_tokens is not None:
            last_ok = r.context_tokens
    return None


def by_tier(rows: list[Metrics]) -> list[dict]:
    """Per tier, in conversation order: speed and reasoning share."""
    tiers: dict[str, list[Metrics]] = {}
    for r in rows:
        tiers.setdefault(r.tier or "?", []).append(r)
    out = []
    for tier, rs in tiers.items():
        ok = [r for r in rs if r.status == "ok"]
        reasoning = _total(ok, "reasoning_tokens")
        completion = _total(ok, "completion_tokens")
        out.append({
            "tier": tier, "turns": len(rs), "ok": len(ok),
            "ttft_mean_s": r6(mean([r.ttft_s for r in ok if r.ttft_s is not None])),
            "decode_tps_mean": r3(mean([r.decode_tps for r in ok if r.decode_tps])),
            "max_context_tokens": max((r.context_tokens for r in rs
                                       if r.context_tokens is not None), default=None),
            "reasoning_turn_share": r3(sum(1 for r in ok if r.has_reasoning) / len(ok)) if ok else None,
            "reasoning_token_share": r3(_ratio(reasoning, completion)),
        })
    return out


def memory(rows: list[Metrics], recalls: list[Recall], window: int | None,
           min_fact_age: int = MIN_FACT_AGE_TURNS) -> dict | None:
    """Recall of planted facts, the rule, and degeneration, against context size.

    The effective context counts only facts stated at least `min_fact_age`
    turns before they were asked, so that a fact just said cannot prop it up;
    recall by distance and by depth counts every probe.
    """
    ok = [r for r in rows if r.status == "ok"]
    ruled = [r for r in ok if r.rule_kept is not None]
    broken = next((r for r in ruled if not r.rule_kept), None)
    repeat = [r.repeat_3gram_ratio for r in ok if r.repeat_3gram_ratio is not None]
    if not recalls and not ruled:
        return None
    aged = [r for r in recalls if r.turns_since_stated is None or r.turns_since_stated >= min_fact_age]
    rs = rounds(aged)
    first = rs[0]["recall"] if rs else None
    return {
        "rounds": rs, "probes": len(recalls), "min_fact_age_turns": min_fact_age,
        "probes_counted": len(aged),
        "recall_mean": r3(mean([r["recall"] for r in rs])),
        "first_round_recall": first,
        "effective_context_tokens": effective_context(rs, 0.9) if rs else None,
        "effective_context_relative_tokens": effective_context(rs, 0.85 * first) if first else None,
        "advertised_window_tokens": window,
        "by_distance": bands(recalls, lambda r: r.tokens_since_stated, DISTANCE_EDGES),
        "by_depth": bands(recalls, lambda r: r.depth, DEPTH_EDGES),
        "grid": grid(recalls),
        "rule_kept_turns": sum(1 for r in ruled if r.rule_kept) if ruled else None,
        "rule_checked_turns": len(ruled) if ruled else None,
        "rule_first_broken": None if broken is None else
        {"turn": broken.turn, "context_tokens": broken.context_tokens},
        "repeat_3gram_ratio_mean": r3(mean(repeat)),
        "empty_answers": sum(1 for r in ok if r.empty_answer),
        "hit_max_tokens": sum(1 for r in ok if r.hit_max_tokens),
    }


def depths(rows: list[Metrics], recalls: list[Recall]) -> list[dict]:
    """One row per measured turn, in the form of llama-bench's depth runs: the
    context it was sent at, its prefill and decode speed, the share of the
    prompt the server's cache served, its reasoning, and the recall of the
    probes asked after it (every fact stated so far, whatever its age)."""
    asked: dict[int, list[Recall]] = {}
    for r in recalls:
        asked.setdefault(r.after_turn, []).append(r)
    return [{"turn": r.turn, "prompt_id": r.prompt_id, "context_tokens": r.context_tokens,
             "context_tokens_source": r.context_tokens_source, "context_tokens_est": r.context_tokens_est,
             "ttft_s": r.ttft_s, "prefill_tps": r.prefill_tps,
             "cached_share": r3(_ratio(r.cached_tokens, r.prompt_tokens)) if cache_counted(r) else None,
             "decode_tps": r.decode_tps, "reasoning_tokens": r.reasoning_tokens,
             "probes": len(asked.get(r.turn, [])),
             "recalled": sum(1 for p in asked.get(r.turn, []) if p.correct)}
            for r in rows if r.status == "ok"]
