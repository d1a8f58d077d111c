"""Derive every number of one turn from its recorded stream: pure functions, no clock, no I/O.

The per-run figures are lalmpipe.aggregate's."""
from __future__ import annotations

import re
from typing import Sequence

from .outcome import window_full
from .reasoning import StreamView
from .stats import percentile
from .vocab import CountSource

# Prompt growth below this share of the conversation's growth means the
# server saw less than was sent (tokenizers differ, so not much stricter).
TRUNCATION_GROWTH_SHARE = 0.5
TRUNCATION_MIN_GROWTH = 16


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
                "tokens_source": CountSource.SERVER}
    if reasoning_count is None or content_count is None:    # no encoder: the client counted neither
        return {**counts, "reasoning_tokens": None, "content_tokens": None, "tokens_source": None}
    if completion is None:
        return {**counts, "reasoning_tokens": reasoning_count, "content_tokens": content_count,
                "tokens_source": CountSource.TIKTOKEN}
    client = reasoning_count + content_count
    reasoning = round(completion * reasoning_count / client) if client else 0
    return {**counts, "reasoning_tokens": reasoning, "content_tokens": completion - reasoning,
            "tokens_source": CountSource.SERVER_TIKTOKEN}


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
    if not text:
        return None
    for pattern in patterns:
        m = re.search(pattern, text)
        if m:
            return int(m.group(1))
    return None


def counted(server_count: int | None, estimate: int | None) -> tuple[int | None, CountSource | None]:
    """Return a count and its source: the server's where it gave one, else the client's estimate."""
    if server_count is not None:
        return server_count, CountSource.SERVER
    return estimate, None if estimate is None else CountSource.ESTIMATE


def generated_tokens(counts: dict, n_token_chunks: int) -> int:
    """Tokens generated this turn: server usage, else tiktoken, else chunks."""
    if counts["completion_tokens"] is not None:
        return counts["completion_tokens"]
    if counts["reasoning_tokens"] is not None:
        return counts["reasoning_tokens"] + (counts["content_tokens"] or 0)
    return n_token_chunks


def read_prompt_count(prompt_tokens: int | None, cached: int | None, completion_tokens: int | None,
                      request_tokens: int | None, request_growth: int | None, prev_prompt_tokens: int | None,
                      window: int | None) -> tuple[int | None, CountSource | None]:
    """Read a server's prompt count against the client's own view of the request.

    `request_tokens` is the client's cl100k count of the whole request, `request_growth`
    of what it added since the last answered one, `prev_prompt_tokens` the least the
    server can have counted of that one (see `truncated`). A count of the whole prompt
    grew with the request: by at least `TRUNCATION_GROWTH_SHARE` of what it added (less
    is truncation). A count short of that but within what this request added (at most
    twice it, plus 64 for the template's tokens), or 0, is the part the server had not
    cached (as some Ollama releases counted): `server-uncached`, the whole unknown; with
    `cached_tokens` beside it that make up the shortfall, the two are the whole:
    `server+cached`. A count that stays where the last whole one was, or fills the window,
    is the whole, cut. Returns the
    count and its source (`server`: the whole); without a usage, the client's estimate.
    """
    if prompt_tokens is None:
        return counted(None, request_tokens)
    if not request_tokens:          # no client count to read it against
        return prompt_tokens, CountSource.SERVER
    if prev_prompt_tokens is None or request_growth is None:        # the first answered request
        return prompt_tokens, CountSource.SERVER_UNCACHED if prompt_tokens == 0 else CountSource.SERVER
    least_whole = prev_prompt_tokens + TRUNCATION_GROWTH_SHARE * request_growth
    stuck = prompt_tokens == prev_prompt_tokens         # the count stayed while the request grew
    if prompt_tokens >= least_whole or stuck or window_full(prompt_tokens, completion_tokens, window):
        return prompt_tokens, CountSource.SERVER
    if cached and prompt_tokens + cached >= least_whole:
        return prompt_tokens + cached, CountSource.SERVER_CACHED
    if prompt_tokens <= PARTIAL_GROWTH_FACTOR * request_growth + PARTIAL_SLACK:
        return prompt_tokens, CountSource.SERVER_UNCACHED
    return prompt_tokens, CountSource.SERVER        # the whole, and less than was sent: truncation


# a count within this of what one request added is a count of that part only
PARTIAL_GROWTH_FACTOR, PARTIAL_SLACK = 2.0, 64


def truncated(prompt_tokens: int | None, completion_tokens: int | None,
              prev_prompt_tokens: int | None, request_growth: int | None,
              window: int | None) -> bool:
    """Tell if the server saw less of the conversation than was sent: its count of
    the whole prompt fell, or grew far less than the request did, or filled its window.

    `prev_prompt_tokens` is the least the server can have counted of the previous
    answered request (its whole count; where it counted only the part it had not
    cached, the last whole count plus each such part since: each request holds the
    one before it). `request_growth` is how much the client's count of the request
    grew since that request.
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
