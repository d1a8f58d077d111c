"""Tell the user on stderr how a run is going: one line per finished turn."""
from __future__ import annotations

import time


class Progress:
    """Progress lines on stderr when it is a terminal; notices unless quiet."""

    def __init__(self, stderr, quiet: bool, total: int | None = None, prog: str = "lalm-chat"):
        self.stderr = stderr
        self.quiet = quiet
        self.live = not quiet and _isatty(stderr)
        self.total = total
        self.prog = prog
        self._t_start = time.monotonic()
        self._done = 0

    def say(self, message: str) -> None:
        """A notice the user should see even in a pipeline (silenced by -q)."""
        if not self.quiet:
            print(f"{self.prog}: {message}", file=self.stderr, flush=True)

    def start_turn(self, n: int, prompt) -> None:
        if self.live:
            of = f"/{self.total}" if self.total else ""
            self.stderr.write(f"\r\x1b[K turn {n}{of} [{prompt.tier}] waiting…")
            self.stderr.flush()

    def end_turn(self, record: dict, view) -> None:
        self._done += 1
        if not self.live:
            return
        usage = view.usage or {}
        ctx = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        first = next((c[0] for c in record["chunks"][:0]), None)
        t_first = view.tokens[0][0] if view.tokens else first
        elapsed = time.monotonic() - self._t_start
        left = ""
        if self.total:
            per = elapsed / self._done
            left = f"  ~{_duration(per * (self.total - self._done))} left"
        status = record["status"] if record["status"] != "ok" else \
            (f"ttft {t_first:.2f}s" if t_first is not None else "ok")
        of = f"/{self.total}" if self.total else ""
        self.stderr.write(f"\r\x1b[K turn {record['turn']}{of} [{record['prompt']['tier']}] "
                          f"ctx {ctx} tok  {status}  {len(view.tokens)} chunks{left}\n")
        self.stderr.flush()


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
