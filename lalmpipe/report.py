"""lalm-report: summarise one or more runs: text, JSON, Markdown, CSV or an HTML page.

Usage:
    lalm-report [--format text|json|markdown|csv|html] [--depths] [--texts RECORDING] [FILE ...]

Reads `run` and `metrics` records (the output of lalm-metrics) and tells how
speed and reasoning changed as the context grew, and where the context broke.
`--format html` writes one self-contained page (lalmpipe.page); `--texts`
names the recording lalm-chat wrote, whose prompts and answers the page shows.

Example:
    lalm-prompts --num-rounds 8 | lalm-chat | lalm-metrics | lalm-report
    lalm-metrics logs/run.jsonl | lalm-report --format json > report.json
    lalm-metrics logs/run.jsonl | lalm-report --format html --texts logs/run.jsonl > run.html
"""
from __future__ import annotations

import argparse
import csv
import json

from . import measure
from .cli import (ExitCode, add_common_args, add_input_args, file_ending, new_parser, non_negative_int, run_command)
from .errors import InputError, UsageError
from .jsonl import read_records
from .plot import PLOT_FILES
from .records import Metrics, Run

PROG = "lalm-report"
COLUMNS = ("turn", "tier", "status", "context_tokens", "ttft_s", "prefill_tps", "decode_tps",
           "completion_tokens", "reasoning_tokens", "cached_tokens")


def collect(records) -> list[dict]:
    """Group records into runs: [{run, rows, recalls}] in the order they appear."""
    runs: dict[str, dict] = {}
    for item in records:
        rec = item.record
        if rec is None:
            continue
        group = runs.setdefault(rec.run_id, {"run": None, "rows": [], "recalls": []})
        if isinstance(rec, Run):
            group["run"] = rec
        else:
            group["rows" if isinstance(rec, Metrics) else "recalls"].append(rec)
    return list(runs.values())


def in_one_unit(rows: list, estimated: bool) -> list:
    """The rows with context sizes all in one unit: the server's counts, or the
    client's cl100k estimates when the server did not count every turn."""
    return [measure.in_unit(r, estimated) for r in rows]


def analyse(group: dict, min_fact_age: int = measure.MIN_FACT_AGE_TURNS) -> dict:
    run = group["run"]
    window = run.server.context_window if run else None
    counted = [r for r in group["rows"] if r.status == "ok"]
    estimated = not all(measure.server_counted(r) for r in counted)
    rows = in_one_unit(group["rows"], estimated)
    recalls = in_one_unit(group["recalls"], estimated)
    summary = measure.summarize(rows)
    summary["context_source"] = measure.CLIENT_CONTEXT if estimated else measure.SERVER
    return {"run": run.to_dict() if run else None, "summary": summary,
            "reasoning": measure.reasoning_summary(rows), "tiers": measure.by_tier(rows),
            "ceiling": measure.ceiling(rows, window, estimated),
            "memory": measure.memory(rows, recalls, window, min_fact_age),
            "depths": measure.depths(rows, recalls), "turns": [r.to_dict() for r in rows]}


def chose_depths(report: dict) -> bool:
    """Whether the run was sent only chosen turns (lalm-chat --at or --every)."""
    settings = (report["run"] or {}).get("settings") or {}
    return bool(settings.get("at") or settings.get("every"))


def _prefill_kind(report: dict) -> str:
    return "cold" if ((report["run"] or {}).get("settings") or {}).get("cold") else "warm"


def _recall_cell(d: dict) -> str:
    return f"{d['recalled']}/{d['probes']}" if d["probes"] else "-"


# the depth table: its heading, the field whose format it takes, how to get it
DEPTH_COLUMNS = (("depth", None, lambda d: approx(_cell(d["context_tokens"]), ESTIMATED["context_tokens"](d))),
                 ("turn", None, lambda d: d["turn"]),
                 ("TTFT s", "ttft_s", lambda d: d["ttft_s"]),
                 ("prefill tok/s", "prefill_tps", lambda d: d["prefill_tps"]),
                 ("cached", None, lambda d: None if d["cached_share"] is None else f"{d['cached_share']:.0%}"),
                 ("decode tok/s", "decode_tps", lambda d: d["decode_tps"]),
                 ("reason tok", None, lambda d: d["reasoning_tokens"]),
                 ("recall", None, _recall_cell))
# per run in a comparison of depths
DEPTH_COMPARED = DEPTH_COLUMNS[2:4] + DEPTH_COLUMNS[5:6] + DEPTH_COLUMNS[7:]


def depth_title(report: dict) -> str:
    s = report["summary"]
    unit = ", depth in client estimates" if measure.in_estimates(s) else ""
    return (f"Depths ({_prefill_kind(report)}: "
            + ("every measured turn a full prefill" if _prefill_kind(report) == "cold"
               else "the server's prefix cache served the share cached")
            + f"{unit}; recall: facts recalled of those asked after the turn)")


def depth_rows(report: dict) -> list[list[str]]:
    """The depth table of one run, heading first."""
    return [[h for h, _, _ in DEPTH_COLUMNS]] + \
        [[_cell(get(d), field) for _, field, get in DEPTH_COLUMNS] for d in report["depths"]]


def depth_comparison(reports: list[dict]) -> tuple[list[list[str]], list[str]]:
    """The runs' depths side by side, heading first, one row per turn any run
    measured; the depth is the client's cl100k count, the same for every
    server over a shared history. Also the legend of the numbered runs."""
    by_turn = [{d["turn"]: d for d in r["depths"]} for r in reports]
    turns = sorted(set().union(*by_turn))
    head = ["turn", "depth (cl100k)"] + [f"{h} [{i}]" for i in range(1, len(reports) + 1)
                                         for h, _, _ in DEPTH_COMPARED]
    rows = []
    for t in turns:
        est = sorted({m[t]["context_tokens_est"] for m in by_turn if t in m} - {None})
        depth = "-" if not est else f"{est[0]}" if len(est) == 1 else f"{est[0]}-{est[-1]}"
        rows.append([str(t), depth] + [_cell(get(m[t]), field) if t in m else "-"
                                       for m in by_turn for _, field, get in DEPTH_COMPARED])
    legend = [f"[{i}] run {(r['run'] or {}).get('run_id', '?')}: {(r['run'] or {}).get('model') or '?'}, "
              f"{_prefill_kind(r)}" for i, r in enumerate(reports, 1)]
    return [head] + rows, legend


def _summary(field: str) -> tuple:
    """Name a field of a report's summary, and how to get it."""
    return field, lambda r: r["summary"][field]


# a row each: its label, the field whose format it takes (None: no number), how to get it
COMPARE = (("model", None, lambda r: (r["run"] or {}).get("model")),
           ("server", None, lambda r: ((r["run"] or {}).get("server") or {}).get("software")
            or (r["run"] or {}).get("base_url")),
           ("turns ok", None, lambda r: f"{r['summary']['ok']}/{r['summary']['turns']}"),
           ("TTFT mean s", *_summary("ttft_mean_s")),
           ("TTFT s per 1k tok", *_summary("ttft_slope_s_per_1k_tokens")),
           ("decode start tok/s", *_summary("decode_tps_start")),
           ("decode end/start", *_summary("decode_ratio_end_to_start")),
           ("largest context", *_summary("max_context_tokens")),
           ("effective context", None, lambda r: (r["memory"] or {}).get("effective_context_tokens")),
           ("history", None, lambda r: _history_cell(_history_of(r))),
           ("ceiling", None, lambda r: "none" if r["ceiling"] is None else
            f"{r['ceiling']['reason']} at {_n(r['ceiling']['context_tokens'])} (turn {r['ceiling']['turn']})"))


def _history_of(report: dict) -> dict | None:
    return (((report["run"] or {}).get("settings") or {}).get("history"))


def _history_cell(source: dict | None) -> str:
    return f"{source['sha256'][:12]} (run {source['run_id']})" if source else "own answers"


def history_sentence(reports: list[dict]) -> str:
    """Whether the compared runs were sent the same history (lalm-chat --history)."""
    sources = [_history_of(r) for r in reports]
    if all(sources) and len({s["sha256"] for s in sources}) == 1:
        s = sources[0]
        # the system message and the standing rule are in every request too
        framed = {json.dumps([st.get("system"), (st.get("rule") or {}).get("text")])
                  for st in (((r["run"] or {}).get("settings") or {}) for r in reports)}
        return (f"shared: {'both' if len(reports) == 2 else 'all'} runs were sent the answers of run "
                f"{s['run_id']} ({s.get('model') or '?'}, sha256 {s['sha256'][:12]}), "
                + ("the same messages at every turn they measured" if len(framed) == 1 else
                   "but not the same messages: their system message or standing rule (--probe-every) differ"))
    return "not shared: " + "; ".join(
        f"run {(r['run'] or {}).get('run_id', '?')} over " + (f"the answers of run {s['run_id']} "
                                                              f"(sha256 {s['sha256'][:12]})" if s else "its own answers")
        for r, s in zip(reports, sources))


def comparison(reports: list[dict]) -> list[list[str]]:
    """One row per measure, one column per run."""
    head = ["run"] + [str((r["run"] or {}).get("run_id", "?")) for r in reports]
    return [head] + [[label] + [_cell(get(r), field) for r in reports] for label, field, get in COMPARE]


def text_table(rows: list[list[str]], right: bool) -> list[str]:
    """Columns as wide as their widest cell, numbers to the right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    pad = str.rjust if right else str.ljust
    return ["  ".join(pad(c, w) for c, w in zip(row, widths)).rstrip() for row in rows]


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


TIER_COLUMNS = (("tier", "tier"), ("turns", "turns"), ("ttft_mean_s", "TTFT s"),
                ("decode_tps_mean", "decode tok/s"), ("max_context_tokens", "context"),
                ("reasoning_turn_share", "turns reasoning"), ("reasoning_token_share", "reasoning share"))


def ceiling_sentence(report: dict) -> str:
    c, s = report["ceiling"], report["summary"]
    if c is None:
        failed = s["turns"] - s["ok"]
        return (f"No ceiling found in {s['turns']} turns"
                + (f" ({failed} failed for reasons other than the context)" if failed else "")
                + f"; the largest context was {approx(_n(s['max_context_tokens']), measure.in_estimates(s))} "
                "tokens.")
    row = next((r for r in report["turns"] if r["turn"] == c["turn"]), {})
    cut = row.get("finish_reason") == "length"
    what = {"truncation": "the server silently truncated the conversation",
            "context_overflow": "the answer was cut when the context window filled" if cut
            else "the request overflowed the context window",
            "timeout": "the server stalled (timeout)",
            "empty": "the server answered with an empty stream"}.get(
                c["reason"], f"the turn failed ({c['reason']})")
    last = f"; the last good turn held {_n(c['last_ok_context_tokens'])} tokens" \
        if c.get("last_ok_context_tokens") else ""
    # the server's own words on a refused request come before any count of the client's
    over, server = c.get("over_window_tokens"), c.get("overflow_tokens")
    counted = f"the server counted {server:,} tokens" if server else ""
    if over:
        where = f": {counted + ', ' if counted else ''}over the {over:,}-token window"
    else:
        where = f": {counted}" if counted else f" at about {_n(c['context_tokens'])} context tokens"
    ours = last or not (over or counted)       # a size of the report's own unit is given
    unit = " (client estimates)" if measure.in_estimates(s) and ours else ""
    return f"Ceiling at turn {c['turn']}: {what}{where}{last}{unit}."


def _n(x) -> str:
    return "?" if x is None else f"{x:,}"


# one format a field, by its unit, so a column reads alike from top to bottom: token
# rates to a tenth, seconds to the millisecond, shares and ratios to three places
CELL_FORMATS = {"ttft_s": ".3f", "ttft_mean_s": ".3f", "ttft_slope_s_per_1k_tokens": ".3f",
                "prefill_tps": ".1f", "decode_tps": ".1f", "decode_tps_mean": ".1f",
                "decode_tps_start": ".1f", "decode_ratio_end_to_start": ".3f",
                "reasoning_turn_share": ".3f", "reasoning_token_share": ".3f",
                "repeat_3gram_ratio_mean": ".3f"}


def _cell(v, field: str | None = None) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, CELL_FORMATS.get(field, ".3f"))
    return str(v)


HEADINGS = {"turn": "turn", "tier": "tier", "status": "status", "context_tokens": "context",
            "ttft_s": "TTFT s", "prefill_tps": "prefill tok/s", "decode_tps": "decode tok/s",
            "completion_tokens": "out tok", "reasoning_tokens": "reason tok", "cached_tokens": "cached"}


def _status(r: dict) -> str:
    if r["status"] == "ok":
        return "ok*" if r.get("truncated") else "ok"
    return r.get("error_kind") or r["status"]


# a count the client made, where the server gave none, is marked as an estimate
ESTIMATED = {"context_tokens": lambda r: r.get("context_tokens_source") == measure.ESTIMATE,
             "completion_tokens": lambda r: r.get("tokens_source") == measure.CLIENT_TOKENS}


def turn_cell(r: dict, c: str) -> str:
    """A cell of the turn table: the status, or the field formatted and marked where the client estimated it."""
    return _status(r) if c == "status" else approx(_cell(r.get(c), c), c in ESTIMATED and ESTIMATED[c](r))


def _row(r: dict) -> list[str]:
    return [turn_cell(r, c) for c in COLUMNS]


def approx(cell: str, estimated: bool) -> str:
    """Mark a number the client estimated; an unknown one stays as it is."""
    return f"≈ {cell}" if estimated and cell not in ("?", "-") else cell


def summary_lines(report: dict) -> list[tuple[str, str]]:
    """The summary as (label, sentence) pairs, for people."""
    s, rz = report["summary"], report["reasoning"]
    f = lambda x, spec="": "?" if x is None else format(x, spec)
    est, half = measure.in_estimates(s), s["decode_half_speed_at_context_tokens"]
    lines = [("TTFT", f"mean {f(s['ttft_mean_s'], '.3f')} s, p50 {f(s['ttft_p50_s'], '.3f')} s, "
                      f"p95 {f(s['ttft_p95_s'], '.3f')} s; "
                      f"{f(s['ttft_slope_s_per_1k_tokens'], '+.3f')} s per 1,000 context tokens"),
             ("Decode", f"mean {f(s['decode_tps_mean'], '.1f')} tok/s; {f(s['decode_tps_start'], '.1f')} "
                        f"at the start, {f(s['decode_tps_end'], '.1f')} at the end "
                        f"(x{f(s['decode_ratio_end_to_start'], '.2f')})"
                        + (f"; below half speed from {approx(_n(half), est)} context tokens"
                           if half else ""))]
    if s["cached_tokens_total"] is not None and s["cache_prompt_tokens_total"]:
        lines.append(("Prefix cache", f"{s['cached_tokens_total']:,} of {s['cache_prompt_tokens_total']:,} "
                                      f"prompt tokens served from cache ({s['cache_hit_ratio']:.0%})"))
    if rz["turns_with_reasoning"]:
        lines.append(("Reasoning", f"in {rz['turns_with_reasoning']} of {s['ok']} turns; mean "
                                   f"{f(rz['reasoning_tokens_mean'], '.0f')} tokens, "
                                   f"{f(rz['reasoning_s_mean'], '.2f')} s"))
    else:
        lines.append(("Reasoning", "none seen"))
    lines.append(("Turns", f"{s['turns']}: {s['ok']} ok, {s['errors']} failed, {s['truncated']} truncated"
                           + (f", {s['interrupted']} interrupted" if s["interrupted"] else "")
                           + f"; largest context {approx(_n(s['max_context_tokens']), est)} tokens"
                           + (" (the server did not count every prompt: client estimates)" if est else "")))
    lines.append(("Ceiling", ceiling_sentence(report)))
    lines += memory_lines(report["memory"])
    return lines


def memory_lines(m: dict | None) -> list[tuple[str, str]]:
    if not m:
        return []
    out = []
    window = f"; the server advertises {_n(m['advertised_window_tokens'])}" \
        if m["advertised_window_tokens"] else ""
    if m["rounds"]:
        eff = m["effective_context_tokens"]
        rel = m["effective_context_relative_tokens"]
        out.append(("Recall", f"{m['probes_counted']} probes of facts at least {m['min_fact_age_turns']} "
                              f"turns old in {len(m['rounds'])} rounds, mean {m['recall_mean']:.0%}, "
                              f"first round {m['first_round_recall']:.0%}; "
                              + (f"effective context {eff:,} tokens (recall >= 90%)" if eff
                                 else "recall never reached 90%")
                              + (f", {rel:,} (>= 85% of the first round)" if rel else "")
                              + window))
    elif m["probes"]:
        out.append(("Recall", f"no probe asked a fact at least {m['min_fact_age_turns']} turns old "
                              "(--min-fact-age): no effective context" + window))
    if m["by_distance"]:
        out.append(("By distance", _bands(m["by_distance"], lambda a, b: f"{a // 1000}-{b // 1000}k"
                                          if b else f">={a // 1000}k", "tokens since stated")))
        out.append(("By depth", _bands(m["by_depth"], lambda a, b: f"{a:.1f}-{b or 1:.1f}",
                                       "0 = start of the context")))
    if m["rule_checked_turns"]:
        broke = m["rule_first_broken"]
        out.append(("Rule", f"kept in {m['rule_kept_turns']} of {m['rule_checked_turns']} turns"
                            + (f"; first broken at turn {broke['turn']} "
                               f"({_n(broke['context_tokens'])} tokens)" if broke else "")))
    out.append(("Degeneration", f"repeated 3-grams {_cell(m['repeat_3gram_ratio_mean'], 'repeat_3gram_ratio_mean')} on average; "
                                f"{m['empty_answers']} empty answers; "
                                f"{m['hit_max_tokens']} answers cut by max_tokens"))
    return out


def _bands(rows: list[dict], name, unit: str) -> str:
    return "; ".join(f"{name(b['from'], b['to'])} {b['recall']:.0%} ({b['probes']})" for b in rows) \
        + f" [{unit}]"


def text(report: dict) -> str:
    run = report["run"] or {}
    lines = [f"{run.get('model', '?')} at {run.get('base_url', '?')} (run {run.get('run_id', '?')})", ""]
    if chose_depths(report):
        lines += [depth_title(report), ""] + text_table(depth_rows(report), right=True)
    else:
        lines += text_table([[HEADINGS[c] for c in COLUMNS]] + [_row(r) for r in report["turns"]], right=True)
    lines.append("")
    lines += [f"{label:<13}{sentence}" for label, sentence in summary_lines(report)]
    return "\n".join(lines) + "\n"


def markdown(report: dict, plot_path: str | None = None) -> str:
    run = report["run"] or {}
    out = [f"# {run.get('model', '?')}: lalmpipe run {run.get('run_id', '?')}", "",
           f"Server `{run.get('base_url', '?')}`, started {run.get('started_at', '?')}.", "",
           "| | |", "|---|---|"]
    out += [f"| {label} | {sentence} |" for label, sentence in summary_lines(report)]
    out += ["", "## Tiers", ""]
    out += md_table([h for _, h in TIER_COLUMNS],
                    [[_cell(t[k], k) for k, _ in TIER_COLUMNS] for t in report["tiers"]])
    if plot_path:
        out += ["", f"![context growth]({plot_path})"]
    if chose_depths(report):
        table = depth_rows(report)
        out += ["", "## Depths", "", depth_title(report) + ".", ""] + md_table(table[0], table[1:])
    else:
        out += ["", "## Turns", ""]
        out += md_table([HEADINGS[c] for c in COLUMNS], [_row(r) for r in report["turns"]])
    return "\n".join(out) + "\n"


def depths_only(reports: list[dict], fmt: str) -> str:
    """Only the depth table (--depths): one run's, or the runs' side by side."""
    if len(reports) == 1:
        title, table, legend = depth_title(reports[0]), depth_rows(reports[0]), []
    else:
        title = f"Depths; history {history_sentence(reports)}"
        table, legend = depth_comparison(reports)
    if fmt == "markdown":
        return "\n".join([title + ".", ""] + md_table(table[0], table[1:])
                         + ([""] + [f"- {line}" for line in legend] if legend else [])) + "\n"
    return "\n".join([title, ""] + text_table(table, right=True) + ([""] + legend if legend else [])) + "\n"


def write_depths_csv(reports: list[dict], stream) -> None:
    """One row per run and measured turn: the long form, for a spreadsheet to pivot."""
    fields = next((list(d) for rep in reports for d in rep["depths"]), [])
    w = csv.DictWriter(stream, fieldnames=["run_id", "model", "prefill", *fields], lineterminator="\n")
    w.writeheader()
    for rep in reports:
        run = rep["run"] or {}
        for d in rep["depths"]:
            w.writerow({"run_id": run.get("run_id"), "model": run.get("model"),
                        "prefill": _prefill_kind(rep), **d})


def write_csv(reports: list[dict], stream) -> None:
    fields = ["run_id"] + [n for n in Metrics.names() if n != "run_id"]
    w = csv.DictWriter(stream, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for rep in reports:
        for r in rep["turns"]:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})


def build_parser() -> argparse.ArgumentParser:
    p = new_parser(PROG, "Summarise runs: speed against context size, reasoning, memory, "
                   "and the context ceiling; several runs are compared side by side.",
                   ["lalm-prompts --num-rounds 8 | lalm-chat | lalm-metrics | lalm-report",
                    "lalm-metrics logs/run.jsonl | lalm-report --format markdown --plot run.png",
                    "lalm-metrics run.jsonl | lalm-report --format html --texts run.jsonl > run.html",
                    "lalm-report run_a.metrics.jsonl run_b.metrics.jsonl   # comparison"])
    add_input_args(p)
    p.add_argument("--format", choices=("text", "json", "markdown", "csv", "html"), default="text")
    p.add_argument("--texts", action="append", default=[], metavar="RECORDING",
                   help="with --format html: the recording lalm-chat wrote (--output), whose "
                        "prompts, reasoning and answers the page shows; once per recording")
    p.add_argument("--min-fact-age", type=non_negative_int, default=measure.MIN_FACT_AGE_TURNS, metavar="N",
                   help="count toward the effective context only facts stated at least N turns "
                        "before they were asked (default: %(default)s)")
    p.add_argument("--depths", action="store_true",
                   help="print only the depth table: one row per measured turn (lalm-chat --at), "
                        "several runs side by side (text, markdown or csv)")
    p.add_argument("--plot", type=file_ending(*PLOT_FILES), metavar="FILE", help="also draw the run(s) against context size "
                   "(.png or .svg; needs matplotlib)")
    add_common_args(p)
    return p


def work(args, stdin, stdout, stderr) -> int:
    if args.texts and args.format != "html":
        raise UsageError("--texts goes with --format html")
    if args.depths and args.format not in ("text", "markdown", "csv"):
        raise UsageError("--depths goes with --format text, markdown or csv")
    if "-" in args.texts:
        raise UsageError("--texts needs a file: stdin carries the metrics")
    hint = "pipe the recording through lalm-metrics first"
    records = read_records(args.inputs, stdin, consumes={"run", "metrics", "recall"},
                           passes={"prompt"}, hint={"turn": hint, "probe": hint})
    reports = [analyse(g, args.min_fact_age) for g in collect(records)]
    if not any(r["turns"] for r in reports):
        raise InputError(f"{', '.join(args.inputs) or 'stdin'}: no metrics records to report")
    if args.plot:
        from .plot import plot
        plot(reports, args.plot)
    if args.format == "html":
        from .page import write_page
        write_page(reports, args.texts, stdout, None if args.quiet else stderr)
    else:
        emit(reports, args.format, stdout, args.plot, args.depths)
    return ExitCode.OK


def main(argv=None, stdin=None, stdout=None, stderr=None) -> int:
    return run_command(PROG, build_parser(), argv, stdin, stdout, stderr, work)


def emit(reports: list[dict], fmt: str, stdout, plot_path: str | None = None, depths: bool = False) -> None:
    several = len(reports) > 1
    if depths and fmt == "csv":
        write_depths_csv(reports, stdout)
    elif depths:
        stdout.write(depths_only(reports, fmt))
    elif fmt == "json":
        doc = {"runs": reports, "comparison": comparison(reports)} if several else reports[0]
        stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        write_csv(reports, stdout)
    elif fmt == "markdown":
        table = comparison(reports)
        head = ["# Comparison", "", "\n".join(md_table(table[0], table[1:])) + "\n",
                f"History {history_sentence(reports)}.", ""] if several else []
        if several and plot_path:
            head += [f"![context growth]({plot_path})", ""]
        stdout.write("\n".join(head + [markdown(r, None if several else plot_path) for r in reports]))
    else:
        parts = [text(r) for r in reports]
        if several:
            parts.append("Comparison\n\n" + "\n".join(text_table(comparison(reports), right=False))
                         + f"\n\nHistory      {history_sentence(reports)}\n")
            if any(chose_depths(r) for r in reports):
                parts.append(depths_only(reports, "text"))
        stdout.write("\n".join(parts))
    stdout.flush()
