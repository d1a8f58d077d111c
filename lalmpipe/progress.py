"""Tell the user on stderr how a run is going.

On a terminal: a live counter while a turn streams, then one line per finished
turn (turn k of N, tier, context, TTFT, decode speed, reasoning), measured as
lalm-metrics measures it, with the time left, and one per round of probes.
Notices (retries, the stop) go to stderr in a pipeline too; -q silences all.
"""
from __future__ import annotations

import time

from .ledger import Ledger
from .records import STATUS_OK
from .render.columns import approx
from .vocab import CountSource

REFRESH_NS = 100_000_000   # redraw the live counter at most ten times a second


class Progress:
    def __init__(self, stderr, quiet: bool, total: int | None = None, prog: str = "lalm-chat"):
        self.stderr = stderr
        self.quiet = quiet
        self.live = not quiet and _isatty(stderr)
        self.total = total
        self.prog = prog
        self._t_start = time.monotonic()
        self._done = 0
        self._label = ""
        self._drawn_ns = 0
        self._measured: Ledger | None = None     # the run followed (on a terminal)
        self.on_event = self._tick if self.live else None

    def say(self, message: str) -> None:
        """A notice the user should see even in a pipeline (silenced by -q)."""
        if not self.quiet:
            self._clear()
            print(f"{self.prog}: {message}", file=self.stderr, flush=True)

    def follow(self, run, earlier=()) -> None:
        """On a terminal, measure each finished turn as lalm-metrics will (the run's
        earlier turns first, on a resume), so its line shows the report's numbers."""
        if self.live:
            self._measured = measured = Ledger(run)
            for turn in earlier:
                measured.measure(turn)

    def start_turn(self, n: int, prompt) -> None:
        if self.live:
            of = f"/{self.total}" if self.total else ""
            self._label = f"turn {n}{of} [{prompt.tier}]"
            self._drawn_ns = 0
            self._write(f"\r\x1b[K{self._label} waiting for the first token…")

    def _tick(self, n_events: int, t_ns: int) -> None:
        if t_ns - self._drawn_ns >= REFRESH_NS:
            self._drawn_ns = t_ns
            self._write(f"\r\x1b[K{self._label} {n_events} chunks, {t_ns / 1e9:.1f} s")

    def end_turn(self, record) -> None:
        self._done += 1
        if self.live and self._measured is not None:
            row = self._measured.measure(record)
            self._write(f"\r\x1b[K{turn_line(record, row, self.total)}{self._left()}\n")

    def start_probe(self, after_turn: int, k: int, of: int) -> None:
        if self.live:
            self._write(f"\r\x1b[Kturn {after_turn}: asking planted fact {k} of {of}…")

    def end_probes(self, after_turn: int, asked: int, elapsed_s: float) -> None:
        if self.live:
            self._write(f"\r\x1b[Kturn {after_turn}: asked {asked} planted facts in {elapsed_s:.1f} s\n")

    def _left(self) -> str:
        if not self.total or self._done >= self.total:
            return ""
        per_turn = (time.monotonic() - self._t_start) / self._done
        return f"  ~{_duration(per_turn * (self.total - self._done))} left"

    def _clear(self) -> None:
        if self.live:
            self._write("\r\x1b[K")

    def _write(self, text: str) -> None:
        self.stderr.write(text)
        self.stderr.flush()


def turn_line(record, row, total: int | None) -> str:
    """One finished turn, in a line, from its metrics."""
    of = f"/{total}" if total else ""
    head = f"turn {record.turn}{of} [{record.prompt.tier}]"
    if record.status != STATUS_OK:
        return f"{head} {record.status}: {record.error.kind if record.error else '?'}"
    if row.ttft_s is None:
        return f"{head} no tokens"
    ctx = approx("?" if row.context_tokens is None else f"{row.context_tokens:,}",
                 row.context_tokens_source == CountSource.ESTIMATE)
    return (f"{head} ctx {ctx} tok  TTFT {row.ttft_s:.2f} s  {row.decode_tps or 0:.1f} tok/s"
            + (f"  reasoning {row.reasoning_tokens:,} tok" if row.reasoning_tokens else ""))


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
