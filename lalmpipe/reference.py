"""The reference conversation: an answer to each of the 231 prompts, written once by a real
model and shipped (prompts/lalm_reference.jsonl), so that every model measured at a depth
in tokens is sent the same context (lalm-chat --history reference, --depths).

Its first line says how it was made (model and its sha256, engine and version, settings,
how each answer was made and cleaned); each other line is one prompt's answer:

    {"kind": "reference", "v": 1, "model": ..., "model_sha256": ..., "engine": ..., ...}
    {"prompt_id": 1, "answer": "...", "finish_reason": "stop", "completion_tokens": 211,
     "removed_sentences": 0}

How it is made (`make reference`, against the project's llama-server):

    python -m lalmpipe.reference write --base-url URL --out raw.jsonl   # resumable
    python -m lalmpipe.reference assemble raw.jsonl > prompts/lalm_reference.jsonl

Each prompt is answered on its own (not inside the growing conversation: at a few hundred
tokens an answer that takes hours on 2 cores), two at a time; then every
sentence of an answer that states a planted fact's value, in any written form, or names
another value of the same kind, is removed (an answer must not leak or contradict the test).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed

from .bundled import bundled, open_text
from .errors import InputError, UsageError
from .facts import DEFAULT_FACTS, load_facts
from .numerals import numbers
from .prompts import DEFAULT_FILE, load
from .recall import LOOPING_REPEAT, items, of_kind, read, repeat_ngram_ratio, value_forms
from .records import Fact

REFERENCE = bundled("lalm_reference.jsonl")
NAME = "reference"      # --history reference
# how each answer was asked for: the settings travel in the file's first line
# (llama.cpp's DRY sampler and a repeat penalty over the answer so far: a small model at
# temperature 0 otherwise loops on its own paragraphs)
SETTINGS = {"temperature": 0.0, "max_tokens": 192, "seed": 0, "repeat_penalty": 1.1, "repeat_last_n": 512,
            "dry_multiplier": 0.8, "dry_base": 1.75, "dry_allowed_length": 2}
# an answer that still loops is asked again at these temperatures, seeded, until one does not
RETRIES = (0.7, 0.9, 1.1)
WINDOW = 0              # exchanges before the prompt that each request carries: none, so the
                        # prompts are answered side by side (WORKERS at a time)
WORKERS = 2
SENTENCE = re.compile(r"(?<=[.!?:])\s+|\n")


def sha256(path) -> str:
    with open_text(path) as fp:
        return hashlib.sha256(fp.read().encode("utf-8")).hexdigest()


def read_reference(path=REFERENCE) -> tuple[dict, dict[int, dict]]:
    """The reference's first line (how it was made) and its answers by prompt id."""
    try:
        with open_text(path) as fp:
            lines = [json.loads(line) for line in fp if line.strip()]
    except FileNotFoundError:
        raise UsageError("the reference conversation is not in this lalmpipe yet (make reference writes it): "
                         "give --history RECORDING, any lalm-chat recording") from None
    if not lines or lines[0].get("kind") != "reference":
        raise InputError(f"{path}:1: not a reference conversation (no 'reference' first line)")
    return lines[0], {r["prompt_id"]: r for r in lines[1:]}


# ---- what an answer must not say ----

def leaks(sentence: str, fact: Fact) -> bool:
    """Whether a sentence states the fact's value (in any written form) or names another
    value of the same kind (a rival the model could recall instead)."""
    forms = value_forms(fact)
    if any(math.isclose(f, n, rel_tol=1e-9) for f in forms for n in numbers(sentence)):
        return True
    kinds = items(fact)
    return any(not m.bare and of_kind(i, m) for m in read(sentence) for i in kinds)


def clean(answer: str, facts: list[Fact]) -> tuple[str, int]:
    """The answer without its sentences that leak a fact (the facts stated so far), and how
    many were removed."""
    kept, removed, pos = [], 0, 0
    for m in list(SENTENCE.finditer(answer)) + [None]:
        end = m.start() if m else len(answer)
        piece = answer[pos:end]
        sep = m.group(0) if m else ""
        if piece.strip() and any(leaks(piece, f) for f in facts):
            removed += 1
            kept.append("\n" if "\n" in sep else "")
        else:
            kept.append(piece + sep)
        pos = m.end() if m else len(answer)
    text = re.sub(r"\n{3,}", "\n\n", "".join(kept)).strip()
    return text, removed


def degenerate(answer: str) -> bool:
    ratio = repeat_ngram_ratio(answer)
    return not answer.strip() or (ratio is not None and ratio > LOOPING_REPEAT)


# ---- making it ----

def write(base_url: str, model: str, out: str) -> None:
    """Answer every prompt not yet in `out` (so the writing can be stopped and resumed), each
    on its own, WORKERS at a time (a server with as many slots answers them in one batch)."""
    done: set[int] = set()
    try:
        with open(out, encoding="utf-8") as fp:
            done = {json.loads(line)["prompt_id"] for line in fp if line.strip()}
    except FileNotFoundError:
        pass
    todo = [p for p in load(DEFAULT_FILE) if p.id not in done]
    with open(out, "a", encoding="utf-8") as fp, ThreadPoolExecutor(WORKERS) as pool:
        asked = {pool.submit(_answer, base_url, model, [{"role": "user", "content": p.text}]): p for p in todo}
        for future in as_completed(asked):
            record = {"prompt_id": asked[future].id, **future.result()}
            fp.write(json.dumps(record, ensure_ascii=False) + "\n")
            fp.flush()
            print(f"{record['prompt_id']}: {record['completion_tokens']} tokens in {record['seconds']} s",
                  file=sys.stderr)


def _answer(base_url: str, model: str, messages: list[dict]) -> dict:
    """One prompt's answer: at the settings, or, if that loops, at the first retry that does not."""
    for attempt, temperature in enumerate((SETTINGS["temperature"], *RETRIES)):
        t = time.monotonic()
        body = {"model": model, "messages": messages, **SETTINGS, "temperature": temperature, "seed": attempt}
        request = urllib.request.Request(base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=900) as r:
            reply = json.load(r)
        answer = reply["choices"][0]["message"]["content"]
        if not degenerate(answer) or attempt == len(RETRIES):
            return {"answer": answer, "finish_reason": reply["choices"][0]["finish_reason"],
                    "completion_tokens": reply["usage"]["completion_tokens"],
                    "prompt_tokens": reply["usage"]["prompt_tokens"], "temperature": temperature,
                    "seed": attempt, "max_tokens": SETTINGS["max_tokens"], "seconds": round(time.monotonic() - t, 2)}
    raise AssertionError("unreachable")


def assemble(raw: str, provenance: dict) -> list[dict]:
    """The shipped records from the raw answers: the first line, then each answer cleaned of
    what would leak a fact stated up to its prompt."""
    facts = load_facts(DEFAULT_FACTS)["facts"]
    with open(raw, encoding="utf-8") as fp:
        answers = {r["prompt_id"]: r for r in map(json.loads, fp)}
    out = []
    for prompt in load(DEFAULT_FILE):
        r = answers.get(prompt.id)
        if r is None:
            raise InputError(f"{raw}: no answer to prompt {prompt.id}")
        text, removed = clean(r["answer"], [f for f in facts if f.stated_in <= prompt.id])
        out.append({"prompt_id": prompt.id, "answer": text, "finish_reason": r["finish_reason"],
                    "completion_tokens": r["completion_tokens"], "temperature": r["temperature"],
                    "seed": r["seed"], "removed_sentences": removed})
    head = {"kind": "reference", "v": 1, **provenance, "settings": SETTINGS, "window_exchanges": WINDOW,
            "made": ("each prompt answered on its own, at the settings (an answer that looped asked again at "
                     "the retry temperatures, seeded: each answer's temperature and seed are on its line); "
                     "then every sentence stating a planted fact's value in any written form, or another "
                     "value of the same kind, removed (removed_sentences)"),
            "answers": len(out)}
    return [head] + out


def provenance(alias: str) -> dict:
    """Which model and engine wrote the answers, from the one table of what is fetched."""
    from .localserver.catalog import LLAMA_CPP, MODELS
    model = MODELS[alias]
    return {"model": alias, "model_title": model.title, "model_file": model.file, "model_sha256": model.sha256,
            "engine": "llama.cpp's llama-server, built from the sources of " + LLAMA_CPP.requirement,
            "engine_sources_sha256": LLAMA_CPP.sha256}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lalmpipe.reference", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="answer every prompt on a server (resumable)")
    w.add_argument("--base-url", required=True)
    w.add_argument("--model", default="qwen2.5-coder-0.5b")
    w.add_argument("--out", required=True)
    a = sub.add_parser("assemble", help="the shipped file from the raw answers, on stdout")
    a.add_argument("raw")
    a.add_argument("--model", default="qwen2.5-coder-0.5b", help="the project's model that wrote them")
    args = p.parse_args(argv)
    if args.command == "write":
        write(args.base_url, args.model, args.out)
    else:
        for record in assemble(args.raw, provenance(args.model)):
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
