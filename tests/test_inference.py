"""How sure the figures are: intervals, the fitted memory curve and the comparison's verdicts,
checked against runs whose truth is known (a model that recalls a fact with probability 0.8
while it is within K tokens, 0.1 beyond), over many seeds; and by hand."""
import math

import numpy as np
import pytest

from lalmpipe import aggregate, compare, inference
from lalmpipe.records import Recall, Run

SEEDS = range(40)
K = 4000


def run(seed: int, forgets_at: float, probes: int = 120, run_id: str = "r") -> aggregate.RunReport:
    """A run whose probes ask facts at distances spread evenly on a log scale, 200-16,000 tokens."""
    rng = np.random.default_rng(seed)
    distances = np.exp(rng.uniform(math.log(200), math.log(16000), probes))
    right = rng.random(probes) < np.where(distances < forgets_at, 0.8, 0.1)
    recalls = [Recall(run_id=run_id, after_turn=i // 10 + 1, fact_id=f"f{i}", expected="x", answer="x",
                      correct=bool(ok), tokens_since_stated=int(d), turns_since_stated=30, context_tokens=None)
               for i, (d, ok) in enumerate(zip(distances, right))]
    r = Run(run_id=run_id, started_at="t", tool={}, base_url="http://h/v1", model=run_id)
    return aggregate.analyse(r, [], recalls)


def test_wilson_intervals_by_hand():
    assert inference.wilson(5, 10) == (0.2366, 0.7634)
    assert inference.wilson(0, 5) == (0.0, 0.4345)
    assert inference.wilson(28, 28) == (0.8794, 1.0)
    assert inference.wilson(0, 0) is None


def test_the_intervals_cover_the_true_share_in_nine_bands_of_ten():
    covered = total = 0
    for seed in SEEDS:
        for band in run(seed, K).memory.by_distance:
            if band.from_ < K < (band.to or math.inf):
                continue                      # a band across K mixes the two shares
            truth = 0.8 if (band.to or math.inf) <= K else 0.1
            covered += band.ci95[0] <= truth <= band.ci95[1]
            total += 1
    assert total >= 120 and covered / total >= 0.9, (covered, total)


def test_the_fitted_curve_falls_below_half_at_k_within_its_interval_in_most_seeds():
    hits = 0
    for seed in SEEDS:
        fit = run(seed, K).memory.fit
        low, high = fit.distance_50_ci95
        hits += (low or 0) <= K <= (high or math.inf)
    assert hits / len(SEEDS) >= 0.8, hits


def test_two_runs_of_the_same_model_are_judged_the_same_and_k_against_4k_different():
    same = differs = 0
    for seed in SEEDS:
        a, b, c = run(seed, K, run_id="a"), run(seed + 1000, K, run_id="b"), run(seed + 2000, 4 * K, run_id="c")
        same += "no difference detectable" in _overall(compare.verdicts([a, b])).verdict
        differs += _overall(compare.verdicts([a, c])).verdict.startswith("differs")
    assert same / len(SEEDS) >= 0.9 and differs / len(SEEDS) >= 0.8, (same, differs)


def _overall(verdicts):
    [v] = [v for v in verdicts if v.figure == "recall" and v.where == "overall"]
    return v


def test_the_same_input_gives_the_same_fit():
    assert run(3, K).memory.fit == run(3, K).memory.fit


@pytest.mark.parametrize("recalled, fit_90, fit_50", [
    ([True] * 10, None, None),                 # never fell: the data cannot say where
    ([False] * 10, None, None),                # never held: nor here
])
def test_a_curve_that_never_falls_or_never_holds_has_no_distance(recalled, fit_90, fit_50):
    fit = inference.memory_curve([100 * (i + 1) for i in range(10)], recalled)
    assert (fit["distance_90_tokens"], fit["distance_50_tokens"]) == (fit_90, fit_50)


def test_a_step_is_fitted_where_it_is():
    fit = inference.memory_curve([100, 200, 300, 400, 500, 600, 700, 800], [True] * 4 + [False] * 4)
    assert fit["distance_50_tokens"] == 450 and fit["distance_90_tokens"] == 450


def test_verdicts_in_words():
    assert inference.verdict(0.003, [12, 14]) == "differs (p = 0.003)"
    assert inference.verdict(0.4, [12, 14]) == "no difference detectable with these samples (n = 12, 14; p = 0.4)"
    assert inference.verdict(None, [1, 1]) == "too few samples to compare (n = 1, 1)"


def test_the_text_gives_each_share_with_its_interval_and_count():
    from lalmpipe.render.sentences import memory_lines
    lines = dict(memory_lines(run(3, K).memory))
    m = run(3, K).memory
    o = m.overall
    assert f"recalled {o.recall:.0%} ({o.ci95[0] * 100:.0f}–{o.ci95[1]:.0%}, n {o.n})" in lines["Recall"]
    first = m.by_distance[0]
    assert lines["By distance"].startswith(
        f"0-1k {first.recall:.0%} ({first.ci95[0] * 100:.0f}–{first.ci95[1]:.0%}, n {first.n})")
    fit = m.fit
    lo, hi = fit.distance_50_ci95
    assert f"below 50 % at {fit.distance_50_tokens:,} tokens back (95 %: {lo:,} to {hi:,})" in lines["Memory curve"]
