"""The one registry of what a figure is called and how it is written: every table, the
page and the plot take a field's heading, its axis label and its number format from here.
"""
from __future__ import annotations

from typing import NamedTuple


class Column(NamedTuple):
    heading: str                # in a table
    fmt: str | None = None      # a float's format; ints are written with thousands separators
    label: str | None = None    # on an axis, in full (else the heading)

    @property
    def axis(self) -> str:
        return self.label or self.heading


# token rates to a tenth, seconds to the millisecond, shares and ratios to three places
COLUMNS: dict[str, Column] = {
    "turn": Column("turn"),
    "prompt_id": Column("prompt"),
    "tier": Column("tier"),
    "status": Column("status"),
    "context_tokens": Column("context", label="context tokens"),
    "ttft_s": Column("TTFT s", ".3f", "time to first token (s)"),
    "prefill_tps": Column("prefill tok/s", ".1f", "prefill (uncached tok/s)"),
    "decode_tps": Column("decode tok/s", ".1f", "decode (tok/s)"),
    "completion_tokens": Column("out tok"),
    "reasoning_tokens": Column("reason tok", label="reasoning tokens"),
    "cached_tokens": Column("cached"),
    "cached_share": Column("cached", ".0%"),
    "kv_cache_mib": Column("KV cache MiB", ".1f", "KV cache (MiB, as the server said)"),
    "turns": Column("turns"),
    "ttft_mean_s": Column("TTFT mean s", ".3f"),
    "decode_tps_mean": Column("decode mean tok/s", ".1f"),
    "max_context_tokens": Column("largest context"),
    "reasoning_turn_share": Column("share of turns reasoning", ".3f"),
    "reasoning_token_share": Column("reasoning share of tokens", ".3f"),
    "ttft_slope_s_per_1k_tokens": Column("TTFT s per 1k tok", ".3f"),
    "decode_tps_start": Column("decode start tok/s", ".1f"),
    "decode_ratio_end_to_start": Column("decode end/start", ".3f"),
    "effective_context_tokens": Column("effective context"),
    "repeat_3gram_ratio_mean": Column("repeated 3-grams", ".3f"),
    "recall": Column("recall"),
}


def heading(field: str) -> str:
    return COLUMNS[field].heading if field in COLUMNS else field


def axis(field: str) -> str:
    return COLUMNS[field].axis if field in COLUMNS else field


def cell(value, field: str | None = None) -> str:
    """A value as a table shows it: unknown "-", yes/no, a float in its field's format."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        column = COLUMNS.get(field or "")
        return format(value, column.fmt if column and column.fmt else ".3f")
    return str(value)


def count(x: int | None) -> str:
    """A count of tokens with thousands separators, "?" when unknown."""
    return "?" if x is None else f"{x:,}"


def approx(text: str, estimated: bool) -> str:
    """Mark a number the client estimated; an unknown one stays as it is."""
    return f"≈ {text}" if estimated and text not in ("?", "-") else text


def plural(n: int, word: str) -> str:
    """"1 probe", "2 probes"."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def share(recall: float, n: int, ci95) -> str:
    """A share with its interval and count: "58 % (41-74 %, n 28)"."""
    if ci95 is None:
        return f"{recall:.0%} (n {n})"
    return f"{recall:.0%} ({ci95[0] * 100:.0f}\u2013{ci95[1]:.0%}, n {n})"


def span(interval, fmt: str) -> str:
    """An interval's two ends, "?" for an end not known."""
    return " to ".join("?" if x is None else format(x, fmt) for x in interval)
