"""Server configurations for a sweep (make sweep CONFIGS="kv=f16 kv=q8_0"): each written in
short, turned into the engine's own arguments, and named back by what differs between them.

Shorthands (llama.cpp's llama-server):

    kv=T        both KV cache types: -ctk T -ctv T (a quantised V cache needs flash attention,
                so a type other than f16, f32 or bf16 adds -fa on)
    k=T, v=T    one of them
    fa=on|off   flash attention: -fa on / -fa off
    ctx=N       the context window: -c N
    arg=TEXT    any engine argument as written: arg=--no-context-shift, "arg=-b 256"

A configuration is one or more of these joined by commas: "kv=q8_0,fa=on,ctx=16384".

    python -m lalmpipe.configs args "kv=q4_0,ctx=8192"    # -> -ctk q4_0 -ctv q4_0 -fa on -c 8192
"""
from __future__ import annotations

import shlex
import sys

from .errors import UsageError

UNQUANTISED = {"f16", "f32", "bf16"}
CACHE_TYPES = UNQUANTISED | {"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}
# an engine argument and the name a comparison gives it
NAMES = {"-ctk": "cache-type-k", "-ctv": "cache-type-v", "-fa": "flash-attn", "-c": "ctx-size"}


def args(config: str) -> list[str]:
    """The engine arguments of one configuration."""
    out: list[str] = []
    flash = None
    for part in filter(None, (p.strip() for p in config.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value:
            raise UsageError(f"configuration {config!r}: {part!r} is not key=value (kv=, k=, v=, fa=, ctx=, arg=)")
        if key in ("kv", "k", "v"):
            if value not in CACHE_TYPES:
                raise UsageError(f"configuration {config!r}: cache type {value!r} is not one of "
                                 f"{', '.join(sorted(CACHE_TYPES))}")
            out += [a for flag in {"kv": ("-ctk", "-ctv"), "k": ("-ctk",), "v": ("-ctv",)}[key]
                    for a in (flag, value)]
            if key != "k" and value not in UNQUANTISED and flash is None:
                flash = "on"
        elif key == "fa":
            if value not in ("on", "off", "auto"):
                raise UsageError(f"configuration {config!r}: fa is on, off or auto, not {value!r}")
            flash = value
        elif key == "ctx":
            if not value.isdigit():
                raise UsageError(f"configuration {config!r}: ctx is a number of tokens, not {value!r}")
            out += ["-c", value]
        elif key == "arg":
            out += shlex.split(value)
        else:
            raise UsageError(f"configuration {config!r}: unknown {key!r} (kv=, k=, v=, fa=, ctx=, arg=)")
    return out + (["-fa", flash] if flash else [])


def settings(arguments: list[str]) -> dict[str, str]:
    """Engine arguments as name -> value ("cache-type-k": "q8_0"); a flag without a value is "on"."""
    out, i = {}, 0
    while i < len(arguments):
        flag = arguments[i]
        value = arguments[i + 1] if i + 1 < len(arguments) and not arguments[i + 1].startswith("-") else None
        out[NAMES.get(flag, flag.lstrip("-"))] = value if value is not None else "on"
        i += 2 if value is not None else 1
    return out


def differences(configs: list[dict[str, str]]) -> list[str]:
    """The settings whose values are not the same in every configuration, by name."""
    names = sorted({k for c in configs for k in c})
    return [n for n in names if len({c.get(n) for c in configs}) > 1]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "args":
        print("usage: python -m lalmpipe.configs args CONFIG", file=sys.stderr)
        return 2
    try:
        print(shlex.join(args(argv[1])))
    except UsageError as e:
        print(f"lalmpipe.configs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
