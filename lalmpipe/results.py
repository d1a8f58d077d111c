"""The typed report of one or more runs: what lalm-report found, before any rendering.

lalmpipe.aggregate makes it from `run`, `metrics` and `recall` records; every renderer
(lalmpipe.render) reads it by attribute; `lalm-report --format json` is it encoded, and
its JSON Schema (docs/report.schema.json) is generated from these Structs.
"""
from __future__ import annotations

from typing import Any

import msgspec

from .configs import settings
from .records import Metrics, Run
from .vocab import CLIENT_CONTEXT, CountSource


class Part(msgspec.Struct, kw_only=True):
    """A typed part of a report."""


class Summary(Part):
    """One run's turns, speed and token totals."""
    turns: int
    ok: int
    errors: int
    interrupted: int
    truncated: int
    ttft_mean_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    decode_tps_mean: float | None
    prompt_tokens_total: int | None
    completion_tokens_total: int | None
    reasoning_tokens_total: int | None
    cached_tokens_total: int | None
    cache_prompt_tokens_total: int | None
    cache_hit_ratio: float | None
    max_context_tokens: int | None
    duration_s: float | None
    ttft_slope_s_per_1k_tokens: float | None
    decode_tps_start: float | None
    decode_tps_end: float | None
    decode_ratio_end_to_start: float | None
    decode_half_speed_at_context_tokens: int | None
    context_source: str = CountSource.SERVER   # or CLIENT_CONTEXT: the unit of every context size
    ttft_slope_ci95: list[float] | None = None          # s per 1k tokens, 95 % (Student's t)
    decode_slope_tps_per_1k_tokens: float | None = None
    decode_slope_ci95: list[float] | None = None
    by_context: list[SpeedBand] = []

    @property
    def estimated(self) -> bool:
        """Whether the report's context sizes are the client's estimates."""
        return self.context_source == CLIENT_CONTEXT


class Reasoning(Part):
    by_tier: dict[str, float | None]
    turns_with_reasoning: int
    share: float | None
    reasoning_tokens_mean: float | None
    reasoning_s_mean: float | None


class Tier(Part):
    tier: str
    turns: int
    ok: int
    ttft_mean_s: float | None
    decode_tps_mean: float | None
    max_context_tokens: int | None
    reasoning_turn_share: float | None
    reasoning_token_share: float | None


class Ceiling(Part):
    """The first turn where the context broke."""
    turn: int
    context_tokens: int | None
    reason: str                         # "truncation", or the error kind
    last_ok_context_tokens: int | None
    over_window_tokens: int | None      # the known window a refused request went over
    overflow_tokens: int | None         # the size the server gave the request it refused


class Share(Part):
    """Probes recalled of probes asked, with the 95 % Wilson score interval of the share."""
    probes: int
    recall: float
    n: int                                  # the probes again, under the name every share uses
    recalled: int
    ci95: tuple[float, float] | None


class Round(Share):
    """The probes asked after one turn."""
    after_turn: int
    context_tokens: int | None


class Band(Share):
    """The probes whose distance (or depth) fell in [from, to)."""
    from_: float = msgspec.field(name="from")
    to: float | None


class Cell(Share):
    """The probes of one round whose fact stood in one depth band."""
    after_turn: int
    context_tokens: int | None
    depth_from: float


class MemoryFit(Part):
    """Recall against distance fitted as never rising (isotonic regression): where it falls
    below 90 % and 50 %, each with its 95 % bootstrap interval (None: the data cannot say)."""
    probes: int
    distance_90_tokens: int | None
    distance_90_ci95: list[int | None] | None
    distance_50_tokens: int | None
    distance_50_ci95: list[int | None] | None


class SpeedBand(Part):
    """The turns whose context fell in [from, to): each speed's median and quartiles."""
    from_: int = msgspec.field(name="from")
    to: int | None
    turns: int
    ttft_s: list[float] | None              # [first quartile, median, third quartile]
    prefill_tps: list[float] | None
    decode_tps: list[float] | None


class RuleBreak(Part):
    turn: int
    context_tokens: int | None


class Memory(Part):
    """Recall of the planted facts, the standing rule, and the answers' health."""
    rounds: list[Round]
    probes: int
    min_fact_age_turns: int
    probes_counted: int
    recall_mean: float | None
    first_round_recall: float | None
    effective_context_tokens: int | None
    # the largest context where every round surely / plausibly held 90 % (its interval's low / high end)
    effective_context_ci95: list[int | None] | None
    effective_context_relative_tokens: int | None
    advertised_window_tokens: int | None
    by_distance: list[Band]
    by_depth: list[Band]
    grid: list[Cell]
    rule_kept_turns: int | None
    rule_checked_turns: int | None
    rule_first_broken: RuleBreak | None
    repeat_3gram_ratio_mean: float | None
    empty_answers: int
    hit_max_tokens: int
    overall: Share | None = None            # every probe counted toward the effective context
    fit: MemoryFit | None = None
    probes_answered: int = 0                # probes the server answered
    probes_without_number: int = 0          # of those, answers that give no number at all


class Depth(Part):
    """One measured turn of a depth run, as llama-bench reports a depth. A turn sent
    several times (lalm-chat --repeat) is one row: `turn` the last sending, after which
    the probes were asked; its TTFT and speeds the means over the repeats, with their
    sample standard deviations (None with one repeat)."""
    turn: int
    prompt_id: int | None
    context_tokens: int | None
    context_tokens_source: CountSource | None
    context_tokens_est: int | None
    ttft_s: float | None
    prefill_tps: float | None
    cached_share: float | None
    decode_tps: float | None
    reasoning_tokens: int | None
    probes: int
    recalled: int
    recall_ci95: tuple[float, float] | None = None
    ttft_sd: float | None = None
    prefill_tps_sd: float | None = None
    decode_tps_sd: float | None = None
    repeats: int = 1                        # the sendings measured (ok)
    target_tokens: int | None = None        # the depth it was chosen for (lalm-chat --depths)


class RunReport(Part):
    """All lalm-report knows of one run."""
    run: Run | None
    summary: Summary
    reasoning: Reasoning
    tiers: list[Tier]
    ceiling: Ceiling | None
    memory: Memory | None
    depths: list[Depth]
    turns: list[Metrics]

    @property
    def model(self) -> str:
        """The model measured: as the server served it, else as it was asked for."""
        return (self.run.served_model or self.run.model if self.run else None) or "?"

    @property
    def name(self) -> str:
        """What a comparison calls the run: its label (lalm-chat --label), else its model."""
        return (self.run.label if self.run else None) or self.model

    @property
    def _config(self) -> dict:
        """How the project's server was started for the run ({} for another server)."""
        return (self.run.server.config if self.run else None) or {}

    @property
    def server_settings(self) -> dict[str, str] | None:
        """How the project's server was started for the run, setting by setting (None for another server)."""
        config = self._config
        if not config:
            return None
        return {"engine": str(config.get("engine")), "model-file": str(config.get("model_file")),
                **({"ctx-size": str(config["ctx"])} if config.get("ctx") else {}),
                **settings(list(config.get("extra_args") or []))}

    @property
    def kv_cache_mib(self) -> float | None:
        """The memory the project's server said its KV cache took for the run (None where unknown)."""
        size = self._config.get("kv_cache_mib")
        return float(size) if isinstance(size, (int, float)) else None

    @property
    def run_id(self) -> str:
        return self.run.run_id if self.run else "?"

    @property
    def chose_depths(self) -> bool:
        """Whether the run was sent only chosen turns (lalm-chat --at or --every)."""
        return bool(self.run and (self.run.settings.at or self.run.settings.every))

    @property
    def prefill(self) -> str:
        """How its measured turns were prefilled: "cold" (--cold) or "warm"."""
        return "cold" if self.run and self.run.settings.cold else "warm"


class Verdict(Part):
    """One figure of a run set against the same figure of the first run, tested."""
    figure: str                     # "recall", "decode_tps", "ttft_s"
    where: str                      # "overall", a distance band ("1-2k tokens since stated"), a context band
    runs: list[str]                 # the first run's id, and the other's
    values: list[float | None]      # each run's share, or median
    n: list[int]                    # the samples behind each
    p_value: float | None
    verdict: str


class Comparison(Part):
    """Several runs, the table that sets them side by side, and the tests of their differences."""
    runs: list[RunReport]
    comparison: list[list[str]]
    verdicts: list[Verdict] = []


def to_builtins(report: RunReport | Comparison) -> dict[str, Any]:
    """The report as JSON-ready objects; records (the run, the turns) as they are written."""
    if isinstance(report, Comparison):
        return {"runs": [to_builtins(r) for r in report.runs], "comparison": report.comparison,
                "verdicts": msgspec.to_builtins(report.verdicts)}
    d = msgspec.to_builtins(report)
    d["run"] = report.run.to_dict() if report.run else None
    d["turns"] = [t.to_dict() for t in report.turns]
    return d


def schema() -> dict[str, Any]:
    """The JSON Schema of `lalm-report --format json`: one run's report, or a comparison."""
    (one, several), defs = msgspec.json.schema_components((RunReport, Comparison))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "lalm-report --format json",
            "anyOf": [one, several], "$defs": defs}


def load(doc: dict[str, Any]) -> RunReport | Comparison:
    """A report read back from its JSON (`lalm-report --format json`), typed again."""
    if "runs" in doc:
        return msgspec.convert(doc, Comparison)
    return msgspec.convert(doc, RunReport)
