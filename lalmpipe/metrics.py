"""lalm-metrics: derive per-turn metrics from a recording.

Usage:
    lalm-metrics [FILE ...]

Reads the `run` and `turn` records of lalm-chat and writes the `run` record
followed by one `metrics` record per turn (and a scored `recall` record per
`probe`). It uses no clock and no network:
the same recording always gives byte-identical output.

Example:
    lalm-prompts --num-rounds 5 | lalm-chat | lalm-metrics | lalm-report
    lalm-metrics logs/run.jsonl > logs/run.metrics.jsonl
"""
from __future__ import annotations

import argparse
import re
from typing import Iterable, Iterator

from . import measure, recall, tokens
from .jsonl import (ExitCode, InputError, RecordWriter, add_common_args, add_input_args, load_as,
                    new_parser, read_records, run_command)
from .measure import r3, r6
from .reasoning import read_stream
from .records import STATUS_OK, Metrics, Probe, Recall, Run, Turn

PROG = "lalm-metrics"


class Conversation:
    """Client-side token count of what each request carried."""

    def __init__(self, run: dict | None):
        params = (run or {}).get("params") or {}
        self.keep_reasoning = bool(params.get("keep_reasoning"))
        self.window = ((run or {}).get("server") or {}).get("context_window")
        rule = params.get("rule") or {}
        try:
            self.rule_check = re.compile(rule["check"]) if rule.get("check") else None
        except (re.error, TypeError) as e:
            raise ValueError(f"run record: params.rule.check is not a regular expression ({e})") from None
        # the standing rule rides with the first question
        self.history_tokens = _add(_count(params.get("system") or ""), _count(rule.get("text") or ""))
        self.prev_prompt_tokens: int | None = None
        self.prev_request_tokens: int | None = None

    def measure(self, turn: Turn) -> dict:
        request_tokens = _add(self.history_tokens, _count(turn.prompt.get("text", "")))
        view = read_stream(turn.chunks)
        # each text is counted once: tiktoken is the costly part of a turn
        content_n, reasoning_n = _count(view.content), _count(view.reasoning)
        row = _metrics(turn, view, self, request_tokens, content_n, reasoning_n)
        row.update(_answer_signals(turn, view, self.rule_check))
        if turn.status == STATUS_OK:
            answer = _count(view.history_text(self.keep_reasoning))   # what lalm-chat appended
            self.history_tokens = _add(request_tokens, answer)
            if row["prompt_tokens"] is not None:
                self.prev_prompt_tokens = row["prompt_tokens"]
                self.prev_request_tokens = request_tokens
        return row

    def score(self, probe: Probe) -> dict:
        """Score a forked probe: the right number in the answer?"""
        view = read_stream(probe.chunks)
        times = measure.timing(view)
        usage = view.usage or {}
        ok = probe.status == STATUS_OK
        return Recall(run_id=probe.run_id, after_turn=probe.after_turn, fact_id=probe.fact.get("id"),
                      expected=probe.fact.get("answer", ""), answer=view.content,
                      correct=ok and recall.correct(view.content, probe.fact.get("answer", "")),
                      status=probe.status,
                      context_tokens=_add(usage.get("prompt_tokens"), usage.get("completion_tokens")),
                      ttft_s=r6(times["ttft_s"]), e2e_s=r6(times["e2e_s"])).to_dict()


def _answer_signals(turn: Turn, view, rule_check) -> dict:
    """Signs of degeneration, and whether the standing rule still holds."""
    ok = turn.status == STATUS_OK
    return {"repeat_3gram_ratio": recall.repeat_ngram_ratio(view.content) if ok else None,
            "empty_answer": ok and not view.content,
            "hit_max_tokens": view.finish_reason == "length",
            "rule_kept": bool(rule_check.search(view.content)) if ok and rule_check else None}


def _count(text: str) -> int | None:
    return tokens.count(text)


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _metrics(turn: Turn, view, conv: Conversation, request_tokens: int | None,
             content_n: int | None, reasoning_n: int | None) -> dict:
    times = measure.timing(view)
    counts = measure.token_counts(view.usage, reasoning_n, content_n)
    n_gen = measure.generated_tokens(counts, len(view.tokens))
    cached = measure.cached_tokens(view.usage, view.timings)
    if counts["prompt_tokens"] is None and turn.error:
        counts["prompt_tokens"] = measure.overflow_prompt_tokens(turn.error.get("body"))
    p, c = counts["prompt_tokens"], counts["completion_tokens"]
    growth = None if conv.prev_request_tokens is None or request_tokens is None \
        else request_tokens - conv.prev_request_tokens
    error = turn.error or {}
    return Metrics(
        run_id=turn.run_id, turn=turn.turn, prompt_id=turn.prompt.get("id"),
        tier=turn.prompt.get("tier"), status=turn.status, error_kind=error.get("kind"),
        finish_reason=view.finish_reason,
        ttft_s=r6(times["ttft_s"]), ttft_content_s=r6(times["ttft_content_s"]),
        e2e_s=r6(times["e2e_s"]),
        decode_tps=r3(measure.decode_tps(n_gen, times["ttft_s"], times["e2e_s"])),
        itl_p50_s=r6(times["itl_p50_s"]), itl_p95_s=r6(times["itl_p95_s"]),
        itl_max_s=r6(times["itl_max_s"]),
        **counts,
        has_reasoning=bool(view.reasoning), reasoning_s=r6(times["reasoning_s"]),
        cached_tokens=cached,
        prefill_tps=r3(measure.prefill_tps(p, cached, times["ttft_s"])),
        context_tokens=_add(p, c),
        conversation_tokens=_add(request_tokens, content_n),
        truncated=measure.truncated(p, c, conv.prev_prompt_tokens, growth, conv.window),
        server_timings=view.timings,
    ).to_dict()


def derive(records: Iterable[tuple[str, int, dict]]) -> Iterator[dict]:
    """Yield the run records and one metrics record per turn, in order."""
    conv = Conversation(None)
    for source, line, rec in records:
        kind = rec["kind"]
        if kind == "run":
            load_as(Run, source, line, rec)
            try:
                conv = Conversation(rec)
            except (ValueError, AttributeError, TypeError) as e:
                raise InputError(f"{source}:{line}: {e}") from None
            yield rec
        elif kind == "turn":
            yield conv.measure(load_as(Turn, source, line, rec))
        elif kind == "probe":
            yield conv.score(load_as(Probe, source, line, rec))
        else:
            yield rec


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(PROG, "Derive per-turn metrics from a lalm-chat recording: pure, "
                        "deterministic, offline.",
                        ["lalm-prompts --num-rounds 5 | lalm-chat | lalm-metrics | lalm-report",
                         "lalm-metrics logs/run.jsonl | lalm-report --format json"])
    add_input_args(parser)
    add_common_args(parser)
    return parser


def work(args, stdin, stdout, stderr) -> int:
    out = RecordWriter(stdout)
    records = read_records(args.inputs, stdin, consumes={"run", "turn", "probe"}, passes={"prompt"},
                           hint={"metrics": "this is already lalm-metrics output"})
    for record in derive(records):
        out.write(record)
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)
