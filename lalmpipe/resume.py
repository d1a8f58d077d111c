"""Keep a run on disk as it happens, and continue a run that was cut short."""
from __future__ import annotations

import contextlib
import io
import json
import os

from .errors import InputError, UsageError
from .jsonl import recording, unwritable
from .history import exchanges
from .records import Prompt, Run, Turn
from .render.columns import plural


def check_output(path: str, resume: bool) -> None:
    """Refuse, before anything is sent, an --output FILE that cannot take the run:
    its folder missing or read-only, a folder in its place, or a run already in
    it (unless resumed)."""
    why = unwritable(path)
    if why is None and not resume and os.path.exists(path) and os.path.getsize(path) > 0:
        why = "it already holds a run; use --resume to continue it or choose another --output"
    if why:
        raise InputError(f"cannot write --output {path}: {why}")


@contextlib.contextmanager
def open_output(path: str | None):
    """Open FILE for appending records (None: no file); check_output has seen it."""
    if path is None:
        yield None
        return
    try:
        fp = open(path, "a", encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot write --output {path}: {(e.strerror or str(e)).lower()}") from None
    with fp:
        yield fp


class PreviousRun:
    """The finished part of a run read back from its --output file."""

    def __init__(self, run: Run, turns: list[Turn], text: str):
        self.run = run
        self.turns = turns
        self.text = text            # the file's records, to send down the pipeline again
        # where the run went last: a turn says so when it went elsewhere than the run record says
        self.base_url = next((t.base_url for t in reversed(turns) if t.base_url), run.base_url)

    def check_same(self, model: str | None, prompts: list[Prompt]) -> None:
        """Refuse to go on with another model or prompt text: exit 2, naming it."""
        if model is not None and model != self.run.model:
            raise UsageError(f"--resume: the run was with model {self.run.model!r}, not {model!r}")
        texts = {p.id: p.text for p in prompts}
        for t in self.turns:
            if t.prompt.id in texts and texts[t.prompt.id] != t.prompt.text:
                raise UsageError(f"--resume: prompt {t.prompt.id} differs from the one turn {t.turn} "
                                 "answered; resume with the same prompts")

    def check_server(self, base_url: str, server, say) -> None:
        """Go on against a new URL (make server listens on a new port each time)
        only where the server there lists the run's model (the preflight has
        refused one that does not list it), and say so."""
        if base_url == self.base_url:
            return
        if not server.models:
            raise UsageError(f"--resume: the run was against {self.base_url}, not {base_url}, and the "
                             f"server there lists no model to show that it serves {self.run.model!r}")
        say(f"--resume: the run was against {self.base_url}; it goes on against {base_url}, "
            f"which serves the same model {self.run.model!r}")

    def apply(self, prompts: list[Prompt], conversation, progress) -> tuple[list[Prompt], int]:
        """Rebuild the history; return the prompts still to do and the next turn number."""
        for t in self.turns:
            # from the chunks, not the stripped `content`: the history is the stream's own text
            for ex in exchanges(t, conversation.keep_reasoning):
                conversation.add_answer(ex.prompt.id, ex.prompt.text, ex.answer)
        # every turn keeps its number, an interrupted one too: numbers stay unique
        first = max((t.turn for t in self.turns), default=0) + 1
        todo = [p for p in prompts if p.id not in conversation.answered]
        progress.say(f"resuming run {self.run.run_id}: {plural(len(conversation.answered), 'prompt')} answered, "
                     f"{len(todo)} to go, from turn {first}")
        return todo, first


class Mend:
    """What a write cut short left at the end of an --output file, and how to put
    it right; done only once the resume is accepted, so that a refused one leaves
    the file as it was."""

    def __init__(self, path: str, cut: int | None = None, newline: bool = False, note: str | None = None):
        self.path = path
        self.cut = cut              # truncate here: a half-written last line
        self.newline = newline      # a whole last record lacking only its newline
        self.note = note

    def apply(self, say) -> None:
        if self.cut is not None:
            with open(self.path, "rb+") as fp:
                fp.truncate(self.cut)
        elif self.newline:
            with open(self.path, "ab") as fp:
                fp.write(b"\n")
        if self.note:
            say(self.note)


def previous_run(path: str) -> tuple[PreviousRun | None, Mend | None]:
    """Read a partial run and check all of it; return it with the mending its
    end needs (None: the file is whole), for the caller to apply once the run
    is to go on.

    A kill in the middle of a write leaves a last line without its newline:
    it is dropped if it is not a whole record, and completed if it is.
    """
    try:
        with open(path, "rb") as fp:
            data = fp.read()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    if not data:
        return None, None
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    whole_tail = bool(tail.strip()) and _is_record(tail)
    keep = data if whole_tail else data[:cut]
    if not keep.strip():
        # killed while the run record itself was written: nothing was done yet
        return None, Mend(path, cut=0, note=f"{path}: only a half-written first line ({len(tail)} bytes), "
                                            "no run record: the run starts afresh")
    run, turns = _read(path, keep)
    mend = None
    if tail and not whole_tail:
        mend = Mend(path, cut=cut, note=f"{path}: dropped a half-written last line ({len(tail)} bytes)")
    elif whole_tail:
        mend = Mend(path, newline=True)
    return PreviousRun(run, turns, keep.decode("utf-8") + ("\n" if whole_tail else "")), mend


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _read(path: str, data: bytes) -> tuple[Run, list[Turn]]:
    run, turns = recording(path, io.BytesIO(data), "one --output file", passes={"probe"})
    if run is None:
        raise InputError(f"{path}:1: no run record to resume")
    return run, turns
