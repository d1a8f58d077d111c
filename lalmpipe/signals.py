"""The stop signals (Ctrl-C, kill, a closed terminal) handled one way for every command
that runs a while: lalm-chat, lalm-replay and the local server."""
from __future__ import annotations

import contextlib
import signal
from typing import Callable, Iterator

# what ends a run: Ctrl-C and kill; HANGUP adds the terminal going away
STOPS = (signal.SIGINT, signal.SIGTERM)
HANGUP = (signal.SIGHUP,)

Handler = Callable[[int, object], None]


def interrupt(signum: int, frame: object) -> None:
    """A handler that stops what runs as Ctrl-C does (KeyboardInterrupt: exit 130)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def on_stop(handler: Handler, signals: tuple[signal.Signals, ...] = STOPS) -> Iterator[None]:
    """Call `handler` on the stop signals while the block lasts, then put back what was there.

    Set explicitly, so that a command started in the background of a script (SIGINT
    ignored) still stops on Ctrl-C; outside the main thread signals are left alone.
    """
    previous = {}
    try:
        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    except ValueError:   # not the main thread
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:      # None: a handler not set from Python, nothing to put back
                signal.signal(sig, old)


def hold(signals: tuple[signal.Signals, ...] = STOPS) -> None:
    """Ignore the stop signals from here on: what is being stopped must not be cut short."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
