"""lalm-prompts: emit the benchmark's prompts as `prompt` records.

Usage:
    lalm-prompts [--tier T ...] [--ids 41-80,95] [--num-rounds N] [--file F]

The prompt file is a JSON list of {id, tier, text}; it is checked when it is
loaded (ids contiguous from 1, known tiers, non-empty text) and a problem is
named by file and line.

Example:
    lalm-prompts --tier expert | lalm-chat | lalm-metrics | lalm-report
"""
from __future__ import annotations

import argparse
import json
from typing import Iterator

from .bundled import bundled, open_text
from .cli import ExitCode, add_common_args, new_parser, positive_int, run_command
from .errors import InputError, UsageError
from .jsonl import RecordWriter
from .records import TIERS, Prompt

PROG = "lalm-prompts"
DEFAULT_FILE = bundled("lalm_prompts.json")


def load(path) -> list[Prompt]:
    """Load and check a prompt file (a path or a bundled file); errors name the file and line."""
    try:
        with open_text(path) as fp:
            text = fp.read()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    prompts: list[Prompt] = []
    for line, obj in _elements(path, text):
        prompts.append(_check(path, line, obj, expected_id=len(prompts) + 1))
    if not prompts:
        raise InputError(f"{path}: no prompts")
    return prompts


def _elements(path: str, text: str) -> Iterator[tuple[int, object]]:
    """Yield (line, element) of a JSON list, so errors can name the line."""
    decoder = json.JSONDecoder()
    i = _skip(text, 0)
    if text[i:i + 1] != "[":
        raise InputError(f"{path}:{_line(text, i)}: expected a JSON list of prompts")
    i = _skip(text, i + 1)
    while text[i:i + 1] != "]":
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        yield _line(text, i), obj
        i = _skip(text, end)
        if text[i:i + 1] == ",":
            i = _skip(text, i + 1)
        elif text[i:i + 1] != "]":
            raise InputError(f"{path}:{_line(text, i)}: invalid JSON: expected ',' or ']'")


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _line(text: str, i: int) -> int:
    return text.count("\n", 0, i) + 1


def _check(path: str, line: int, obj, expected_id: int) -> Prompt:
    where = f"{path}:{line}"
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a prompt must be an object with id, tier and text")
    if obj.get("id") != expected_id or isinstance(obj.get("id"), bool):
        raise InputError(f"{where}: id {obj.get('id')!r} out of order: ids run from 1 "
                         f"without gaps, expected {expected_id}")
    if obj.get("tier") not in TIERS:
        raise InputError(f"{where}: prompt {expected_id}: unknown tier {obj.get('tier')!r} "
                         f"(one of {', '.join(TIERS)})")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: prompt {expected_id}: empty text")
    return Prompt(id=obj["id"], tier=obj["tier"], text=text)


def parse_ids(spec: str) -> set[int]:
    """Parse '41-80,95' into a set of ids."""
    ids: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            a, b = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad id range {part!r} (e.g. 41-80,95)") from None
        if a > b:
            raise argparse.ArgumentTypeError(f"bad id range {part!r}: {a} > {b}")
        ids.update(range(a, b + 1))
    return ids


def id_ranges(ids) -> str:
    """Write ids as --ids takes them: {1, 2, 3, 7} -> '1-3,7'."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def select(prompts: list[Prompt], tiers=None, ids=None, num_rounds=None) -> list[Prompt]:
    """The prompts of the tiers and ids asked for; a selection of none is a usage error
    naming the ids there are (the next command would fail on empty input)."""
    in_tiers = [p for p in prompts if not tiers or p.tier in tiers]
    chosen = [p for p in in_tiers if ids is None or p.id in ids]
    if not chosen:
        flags = " ".join([f"--tier {t}" for t in tiers or ()] + ([f"--ids {id_ranges(ids)}"] if ids else []))
        where = f"{', '.join(tiers)}: " if tiers else ""
        there = f"ids {id_ranges(p.id for p in in_tiers)}" if in_tiers else "none in the file"
        raise UsageError(f"no prompt matches {flags} ({where}{there})")
    return chosen if num_rounds is None else chosen[:num_rounds]


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, "Emit the benchmark's prompts as JSON Lines `prompt` records.",
                   ["lalm-prompts --tier expert | lalm-chat | lalm-metrics | lalm-report",
                    "lalm-prompts --ids 1-10,95 --num-rounds 5"])
    p.add_argument("--file", default=DEFAULT_FILE, help="prompt file (default: the bundled 231)")
    p.add_argument("--tier", action="append", choices=TIERS, help="only this tier (repeatable)")
    p.add_argument("--ids", type=parse_ids, help="only these ids, e.g. 41-80,95")
    p.add_argument("--num-rounds", type=positive_int, metavar="N", help="only the first N selected")
    add_common_args(p)
    return p


def work(args, stdin, stdout, stderr) -> int:
    out = RecordWriter(stdout)
    for prompt in select(load(args.file), args.tier, args.ids, args.num_rounds):
        out.write(prompt.to_dict())
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)
