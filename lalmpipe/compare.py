"""Tell whether runs differ: each figure of every run after the first set against the same
figure of the first, tested (Fisher's exact test for recall, Mann-Whitney's U for speed over
the turns in the same context band), with a verdict in words. Pure functions."""
from __future__ import annotations

from .aggregate import band_edges, by_context
from .inference import sample_difference, share_difference, verdict
from .results import Band, RunReport, Verdict
from .stats import percentile, r3

SPEEDS = ("ttft_s", "decode_tps")


def verdicts(reports: list[RunReport]) -> list[Verdict]:
    """Every figure the runs share, each later run against the first."""
    base, out = reports[0], []
    for other in reports[1:]:
        out += _recall(base, other) + _depth_recall(base, other) + _speed(base, other)
    return out


def _verdict(figure: str, where: str, a: RunReport, b: RunReport, values: list, n: list[int],
             p: float | None) -> Verdict:
    return Verdict(figure=figure, where=where, runs=[a.run_id, b.run_id], values=values, n=n,
                   p_value=None if p is None else round(p, 6), verdict=verdict(p, n))


def _band_name(band: Band | tuple[int, int | None], unit: str) -> str:
    lo, hi = (band.from_, band.to) if isinstance(band, Band) else band
    return (f"{lo / 1000:g}-{hi / 1000:g}k" if hi else f">={lo / 1000:g}k") + f" {unit}"


def _recall(a: RunReport, b: RunReport) -> list[Verdict]:
    """Recall overall, and per band of distance to the fact that both runs probed."""
    if not (a.memory and b.memory):
        return []
    out = []
    if a.memory.overall and b.memory.overall:
        x, y = a.memory.overall, b.memory.overall
        out.append(_verdict("recall", "overall", a, b, [x.recall, y.recall], [x.n, y.n],
                            share_difference((x.recalled, x.n), (y.recalled, y.n))))
    theirs = {(band.from_, band.to): band for band in b.memory.by_distance}
    for xb in a.memory.by_distance:
        yb = theirs.get((xb.from_, xb.to))
        if yb is not None:
            out.append(_verdict("recall", _band_name(xb, "tokens since stated"), a, b, [xb.recall, yb.recall],
                                [xb.n, yb.n], share_difference((xb.recalled, xb.n), (yb.recalled, yb.n))))
    return out


def _depth_recall(a: RunReport, b: RunReport) -> list[Verdict]:
    """Recall after each prompt both depth runs measured and probed (by prompt: repeats
    change the turn numbers)."""
    if not (a.chose_depths and b.chose_depths):
        return []
    theirs = {d.prompt_id: d for d in b.depths}
    return [_verdict("recall", f"after prompt {x.prompt_id}", a, b,
                     [round(x.recalled / x.probes, 4), round(y.recalled / y.probes, 4)], [x.probes, y.probes],
                     share_difference((x.recalled, x.probes), (y.recalled, y.probes)))
            for x in a.depths if (y := theirs.get(x.prompt_id)) is not None and x.probes and y.probes]


def _speed(a: RunReport, b: RunReport) -> list[Verdict]:
    """TTFT and decode speed over the turns of each context band both runs reached."""
    mine, theirs, out = by_context(a.turns), by_context(b.turns), []
    for band in sorted(set(mine) & set(theirs)):
        edges = band_edges(band)
        for field in SPEEDS:
            xs = [v for r in mine[band] if (v := getattr(r, field)) is not None]
            ys = [v for r in theirs[band] if (v := getattr(r, field)) is not None]
            if xs and ys:
                out.append(_verdict(field, _band_name(edges, "context tokens"), a, b,
                                    [r3(percentile(xs, 50)), r3(percentile(ys, 50))], [len(xs), len(ys)],
                                    sample_difference(xs, ys)))
    return out
