"""The manners every command shares: its parser, argument types, exit codes, and one
line on stderr for each way a command can end (bad input, bad usage, Ctrl-C, a closed pipe).
"""
from __future__ import annotations

import argparse
import contextlib
import enum
import math
import os
import sys
from typing import Callable, TextIO

from .errors import InputError, UsageError
from .jsonl import silence
from .redact import API_KEY_VAR, redact


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    INTERRUPTED = 130


def add_input_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="FILE",
                        help="JSON Lines input (default: stdin, also '-')")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return n


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of 0 or more (--retries 0: none)."""
    return _checked(text, int, lambda n: n >= 0, "a whole number of 0 or more")


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    return _checked(text, float, lambda s: 0 < s < math.inf, "a number of seconds above 0")


def non_negative_float(text: str) -> float:
    """An argparse type: a finite number of 0 or more."""
    return _checked(text, float, lambda x: 0 <= x < math.inf, "a number of 0 or more")


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free port) to 65535."""
    return _checked(text, int, lambda n: 0 <= n <= 65535, "a port from 0 to 65535")


def file_ending(*suffixes: str) -> Callable[[str], str]:
    """An argparse type: a file name ending in one of `suffixes`, case aside."""
    def parse(text: str) -> str:
        return _checked(text, str, lambda name: name.lower().endswith(suffixes),
                        "a " + " or ".join(suffixes) + " file")
    return parse


def _checked(text: str, convert: Callable, accept: Callable, what: str):
    """Convert text, and refuse it as argparse does unless `accept` takes the value."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return value


def entry(prog: str, body: Callable[[], int], stdout: TextIO, stderr: TextIO,
          debug: bool = False) -> int:
    """Run a command body with the shared error, pipe and interrupt manners."""
    try:
        return int(body())
    except InputError as e:
        _flush_quietly(stdout)
        print(f"{prog}: error: {e}", file=stderr)
        return ExitCode.ERROR
    except UsageError as e:
        print(f"{prog}: error: {e}", file=stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        _flush_quietly(stdout)
        print(f"{prog}: interrupted", file=stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        silence(stdout)
        return ExitCode.OK
    except Exception as e:  # noqa: BLE001 - one line for users, traceback on --debug
        if debug:
            raise
        _flush_quietly(stdout)
        # an HTTP library's error may name the URL, credentials and all
        print(f"{prog}: error: {redact(str(e), [os.environ.get(API_KEY_VAR, '')])}", file=stderr)
        return ExitCode.ERROR


def _flush_quietly(stream) -> None:
    try:
        stream.flush()
    except (BrokenPipeError, ValueError, OSError):
        silence(stream)


def parse_args(parser: argparse.ArgumentParser, argv, stdout, stderr) -> argparse.Namespace | int:
    """Parse argv into the command's own streams; on --help or a usage error
    return the exit code instead of exiting."""
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            return parser.parse_args(argv)
        except SystemExit as e:
            return int(e.code or 0)


def new_parser(prog: str, description: str, examples: list[str]) -> argparse.ArgumentParser:
    """A parser whose --help ends with real example pipelines."""
    return argparse.ArgumentParser(
        prog=prog, description=description,
        epilog="example:\n" + "\n".join(f"  {e}" for e in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(prog: str, parser: argparse.ArgumentParser, argv, stdin, stdout, stderr,
                work: Callable) -> int:
    """Parse argv, then run work(args, stdin, stdout, stderr) with the shared manners."""
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = parse_args(parser, argv, stdout, stderr)
    if isinstance(args, int):
        return args
    return entry(prog, lambda: work(args, stdin, stdout, stderr), stdout, stderr, args.debug)
