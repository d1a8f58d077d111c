"""Read and write records as JSON Lines.

Errors name their source and line (``turns.jsonl:12: invalid JSON``); stdout
carries records only, flushed one by one; a writer whose stdout reader went away
goes on into its file.
"""
from __future__ import annotations

import contextlib
import os
from typing import IO, AbstractSet, Callable, Iterable, Iterator, NamedTuple, TextIO

import jsonlines
import msgspec

from .errors import InputError
from .records import KINDS, Record, RecordError, Run, Turn, as_record, check_version, identity


def _binary(stream) -> IO[bytes]:
    return getattr(stream, "buffer", stream)


def iter_lines_records(name: str, fp) -> Iterator[tuple[str, int, dict]]:
    """Yield (source, line number, decoded object) from one open stream."""
    decode = msgspec.json.decode
    for lineno, line in enumerate(fp, 1):
        if not line.strip():
            continue
        try:
            obj = decode(line)
        except msgspec.DecodeError:
            raise InputError(f"{name}:{lineno}: {_why_not_json(line)}") from None
        yield name, lineno, obj


def _why_not_json(line) -> str:
    if isinstance(line, bytes):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
    return "invalid JSON"


class Line(NamedTuple):
    """One record read: where it came from, the decoded line, and the typed
    record when the stage consumes its kind (None for records passed through)."""
    source: str
    lineno: int
    raw: dict
    record: Record | None


def read_records(inputs: list[str], stdin, consumes: set[str], passes: AbstractSet[str] = frozenset(),
                 hint: dict[str, str] | None = None) -> Iterator[Line]:
    """Yield checked records from files or stdin (see `checked_records`);
    input without a single record is an InputError."""
    count = 0
    for name in inputs or ["-"]:
        try:
            fp = _binary(stdin) if name == "-" else open(name, "rb")
        except OSError as e:
            raise InputError(f"{name}: {e.strerror}") from None
        with contextlib.nullcontext(fp) if name == "-" else fp:
            for item in checked_records("stdin" if name == "-" else name, fp, consumes, passes, hint):
                count += 1
                yield item
    if count == 0:
        where = "stdin" if not inputs or inputs == ["-"] else ", ".join(inputs)
        raise InputError(f"{where}:1: empty input: no records")


def once(lines: Iterable[Line], warn: Callable[[str], None]) -> Iterator[Line]:
    """The records read, each only once: a run, turn or probe seen again (the same file
    given twice, say) is dropped, never counted twice, and a warning says where, once
    for each place it was first read."""
    seen: dict[tuple, str] = {}
    dropped: dict[tuple[str, str], list[str]] = {}
    for item in lines:
        key = identity(item.record) if item.record is not None else None
        where = f"{item.source}:{item.lineno}"
        if key is None:
            yield item
        elif key in seen:
            dropped.setdefault((item.source, seen[key].rpartition(":")[0]), []).append(
                f"{where} repeats {seen[key]}")
        else:
            seen[key] = where
            yield item
    for (source, first), repeats in dropped.items():
        warn(f"{source}: {len(repeats)} record{'s' if len(repeats) > 1 else ''} already read from {first} "
             f"dropped ({repeats[0]}{', ...' if len(repeats) > 1 else ''})")


def checked_records(name: str, fp, consumes: set[str], passes: AbstractSet[str] = frozenset(),
                    hint: dict[str, str] | None = None) -> Iterator[Line]:
    """Yield the records of one binary stream, typed where the stage consumes them.

    Records of the kinds in `consumes` or `passes`, and of kinds lalmpipe does
    not know (to be passed through), are yielded; another lalmpipe kind is an
    InputError naming source and line, with `hint` as advice.
    """
    for source, lineno, obj in iter_lines_records(name, fp):
        where = f"{source}:{lineno}"
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind is None:
            raise InputError(f"{where}: not a lalmpipe record (no 'kind')")
        if kind not in KINDS:
            yield Line(source, lineno, obj, None)
            continue
        if kind not in consumes and kind not in passes:
            expected = " or ".join(sorted(consumes))
            extra = (hint or {}).get(kind, "")
            raise InputError(f"{where}: unexpected {kind!r} record, expected {expected}"
                             + (f" ({extra})" if extra else ""))
        try:
            check_version(obj)
            record = KINDS[kind].from_dict(obj) if kind in consumes else None
        except (RecordError, TypeError, ValueError) as e:
            raise InputError(f"{where}: {e}") from None
        yield Line(source, lineno, obj, record)


def recording(name: str, fp, what: str,
              passes: AbstractSet[str] = frozenset()) -> tuple[Run | None, list[Turn]]:
    """The run record (None if there is none) and the turns of one lalm-chat
    recording; `what` names the file in the errors ("one --output file")."""
    run, turns = None, []
    for item in checked_records(name, fp, consumes={"run", "turn"}, passes=passes):
        rec = item.record
        if isinstance(rec, Run):
            if run is not None and rec.run_id != run.run_id:
                raise InputError(f"{item.source}:{item.lineno}: a second run in {what}")
            run = rec
        elif isinstance(rec, Turn):
            if run is None:
                raise InputError(f"{item.source}:{item.lineno}: a turn before the run record")
            turns.append(rec)
    return run, turns


class RecordWriter:
    """Write records one compact JSON object a line, flushed after each.

    With a file beside stdout, each record reaches the file (synced to disk)
    first; if stdout's reader goes away, the run goes on into the file.
    """

    def __init__(self, stream: TextIO, also: TextIO | None = None, on_broken=None):
        self._stream = stream
        self._out: jsonlines.Writer | None = jsonlines.Writer(stream, compact=True, flush=True)
        self._file = also
        self._to_file = jsonlines.Writer(also, compact=True, flush=True) if also else None
        self._on_broken = on_broken

    def write(self, record: Record | dict, to_file: bool = True) -> None:
        record = as_record(record)
        if self._file is not None and self._to_file is not None and to_file:
            self._to_file.write(record)
            os.fsync(self._file.fileno())
        self._to_stdout(self._out.write if self._out else None, record)

    def write_text(self, text: str) -> None:
        """Send lines already in the file down stdout only."""
        self._to_stdout(self._write_flushed if self._out else None, text)

    def _write_flushed(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()

    def _to_stdout(self, write, what) -> None:
        if write is None:
            return
        try:
            write(what)
        except BrokenPipeError:
            if self._file is None:     # no file to go on into
                raise
            silence(self._stream)
            self._out = None
            if self._on_broken:
                self._on_broken(f"stdout was closed; the run goes on into {self._file.name}")



def unwritable(path: str) -> str | None:
    """Why a file cannot be written at `path`, in words, or None: its folder missing or
    read-only, a folder in its place, the file read-only."""
    folder = os.path.dirname(path) or "."
    if not os.path.exists(folder):
        return f"no such folder {folder}"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if os.path.isdir(path):
        return "it is a folder"
    if not os.path.exists(path):
        return None if os.access(folder, os.W_OK | os.X_OK) else f"the folder {folder} is not writable"
    return None if os.access(path, os.W_OK) else "it is not writable"


def silence(stream) -> None:
    """Point a broken stdout at devnull so the interpreter's exit flush is quiet."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):   # io.UnsupportedOperation is both
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
