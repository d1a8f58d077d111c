"""A whole run made up without a server: the metrics records lalm-metrics would write,
with recall probes, and the recording's turns with long answers, for pages of full size."""
from __future__ import annotations

import json

from lalmpipe.records import TIERS, Metrics, PromptRef, Recall, Run, Turn

RUN_ID = "synthetic"
PARAGRAPH = ("The limiter sits last in the chain, its ceiling a little under full scale so that "
             "inter-sample peaks survive the codec; the sub bass stays mono below the crossover. ")


def _tier(turn: int, turns: int) -> str:
    return TIERS[min(len(TIERS) - 1, (turn - 1) * len(TIERS) // turns)]


def synthetic_run(turns: int = 231, answer_chars: int = 6000, probe_every: int = 10) -> tuple[str, str]:
    """Return (metrics JSON Lines, recording JSON Lines) of one run of `turns` turns."""
    run = Run(run_id=RUN_ID, started_at="2026-11-29T00:00:00Z", tool={"name": "lalmpipe"},
              base_url="http://127.0.0.1:1/v1", model="synthetic-8b",
              params={"temperature": 0.7, "max_tokens": 32768})
    answer = (PARAGRAPH * (answer_chars // len(PARAGRAPH) + 1))[:answer_chars]
    metrics, recording = [run.to_dict()], [run.to_dict()]
    for n in range(1, turns + 1):
        context = 400 * n
        tier = _tier(n, turns)
        metrics.append(Metrics(
            run_id=RUN_ID, turn=n, prompt_id=n, tier=tier, ttft_s=0.2 + context / 20000,
            e2e_s=4.0 + context / 10000, decode_tps=60.0 - n * 0.15, prompt_tokens=context - 300,
            completion_tokens=300, reasoning_tokens=40 + n % 7, content_tokens=260,
            has_reasoning=True, cached_tokens=context - 700, prefill_tps=2000.0 - n,
            context_tokens=context, context_tokens_est=context, finish_reason="stop",
            repeat_3gram_ratio=0.01 * (n % 5)).to_dict())
        recording.append(Turn(
            run_id=RUN_ID, turn=n, prompt=PromptRef(id=n, tier=tier, text=f"Question {n}: why?"),
            sent_at="2026-11-29T00:00:00Z", status="ok", content=f"Answer {n}. {answer}",
            reasoning=f"Reasoning {n}. " + PARAGRAPH * 3).to_dict())
        if n % probe_every == 0:
            metrics += [Recall(run_id=RUN_ID, after_turn=n, fact_id=f"f{k}", expected="x", answer="x",
                               correct=(n + k) % 4 != 0, context_tokens=context, stated_turn=k,
                               turns_since_stated=n - k, tokens_since_stated=400 * (n - k),
                               depth=k / n).to_dict() for k in range(1, min(n, 19) + 1, 3)]
    return _lines(metrics), _lines(recording)


def _lines(records: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)
