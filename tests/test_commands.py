"""Every command through main() with injected streams, goldens, bad input, manners."""
import io
import json
import os
import re
import subprocess

import pytest

from conftest import ROOT, prompts_jsonl, run_main
from lalmpipe import chat, metrics, prompts, replay, report
from regen_golden import CASES, FIXTURES, outputs

COMMANDS = {"lalm-prompts": prompts, "lalm-chat": chat, "lalm-metrics": metrics,
            "lalm-report": report, "lalm-replay": replay}


@pytest.mark.parametrize("case", CASES)
def test_golden_outputs(case):
    for name, text in outputs(case):
        with open(os.path.join(FIXTURES, name), encoding="utf-8") as fp:
            assert text == fp.read(), f"{name} changed: run tests/regen_golden.py and review the diff"


def test_metrics_is_deterministic_and_forwards_the_run():
    src = os.path.join(FIXTURES, "llama.in.jsonl")
    a, b = run_main(metrics.main, [src]), run_main(metrics.main, [src])
    assert a.out == b.out
    recs = a.records
    assert recs[0]["kind"] == "run" and [r["kind"] for r in recs[1:]] == ["metrics"] * 3


def test_real_recording_numbers_agree_with_the_server():
    rows = run_main(metrics.main, [os.path.join(FIXTURES, "llama.in.jsonl")]).records[1:]
    for r in rows:
        t = r["server_timings"]
        # the server's own prompt time fits inside the client's TTFT
        assert r["ttft_s"] * 1000 >= t["prompt_ms"]
        assert r["completion_tokens"] == t["predicted_n"]
    assert [r["prompt_tokens"] for r in rows] == sorted(r["prompt_tokens"] for r in rows)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(name):
    ran = run_main(COMMANDS[name].main, ["--help"])
    assert ran.code == 0
    assert "example" in ran.out and "|" in ran.out


@pytest.mark.parametrize("name", ["lalm-chat", "lalm-prompts"])
def test_every_option_says_what_it_does_and_a_set_default_shows(name):
    parser = COMMANDS[name].build_parser()
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        words = re.sub(r"\(?default:.*", "", action.help or "", flags=re.S).strip()
        assert words, f"{action.option_strings[0]} does not say what it does"
        if action.default is not None:
            assert "default" in action.help, f"{action.option_strings[0]} hides its default"
    text = " ".join(run_main(COMMANDS[name].main, ["--help"]).out.split())
    if name == "lalm-chat":
        assert "--timeout S bound on a whole turn (default: none)" in text
        assert "go on (default: stop)" in text


def test_prompts_selection():
    def ids(argv):
        return [r["id"] for r in run_main(prompts.main, argv).records]
    assert ids([]) == list(range(1, 232))
    assert ids(["--tier", "expert"]) == list(range(121, 161))
    assert ids(["--tier", "foundations", "--tier", "ultra-deep", "--num-rounds", "42"]) == \
        list(range(1, 41)) + [201, 202]
    assert ids(["--ids", "41-43,95"]) == [41, 42, 43, 95]
    rec = run_main(prompts.main, ["--ids", "7"]).records[0]
    assert set(rec) == {"kind", "v", "id", "tier", "text"} and rec["kind"] == "prompt"


@pytest.mark.parametrize("argv, message", [
    (["--ids", "999"], "no prompt matches --ids 999 (ids 1-231)"),
    (["--ids", "232-240,300"], "no prompt matches --ids 232-240,300 (ids 1-231)"),
    (["--tier", "expert", "--ids", "1-5"], "no prompt matches --tier expert --ids 1-5 (expert: ids 121-160)"),
    (["--tier", "foundations", "--tier", "ultra-deep", "--ids", "100"],
     "no prompt matches --tier foundations --tier ultra-deep --ids 100 (foundations, ultra-deep: ids 1-40,201-231)"),
])
def test_a_selection_of_no_prompt_is_a_usage_error_naming_the_ids_there_are(argv, message):
    ran = run_main(prompts.main, argv)
    assert (ran.code, ran.out, ran.err) == (2, "", f"lalm-prompts: error: {message}\n")


@pytest.mark.parametrize("content, message", [
    ('[{"id": 1, "tier": "foundations", "text": "a"},\n {"id": 3, "tier": "expert", "text": "b"}]',
     ":2: id 3 out of order"),
    ('[{"id": 1, "tier": "basics", "text": "a"}]', ":1: prompt 1: unknown tier 'basics'"),
    ('[\n{"id": 1, "tier": "expert", "text": "  "}]', ":2: prompt 1: empty text"),
    ('[\n{"id": 1, "tier": "expert", "text": "x"},\n{"id": 2 "tier"}]', ":3: invalid JSON"),
    ('{"id": 1}', ":1: expected a JSON list of prompts"),
])
def test_prompt_file_errors_name_file_and_line(tmp_path, content, message):
    f = tmp_path / "p.json"
    f.write_text(content)
    ran = run_main(prompts.main, ["--file", str(f)])
    assert ran.code == 1 and ran.out == ""
    assert ran.err.strip() == f"lalm-prompts: error: {f}{message}" or \
        ran.err.startswith(f"lalm-prompts: error: {f}{message}")
    assert ran.err.count("\n") == 1


def test_bad_usage_exits_2():
    assert run_main(prompts.main, ["--ids", "9-3"]).code == 2
    assert run_main(chat.main, ["--on-error", "never"]).code == 2
    assert run_main(chat.main, ["--resume"], prompts_jsonl(["x"])).code == 2


RUN = '{"kind":"run","v":1,"run_id":"r","started_at":"t","tool":{},"base_url":"u","model":"m"}\n'


@pytest.mark.parametrize("stdin, message", [
    (RUN + "{not json\n", "stdin:2: invalid JSON"),
    (RUN + '{"kind":"turn","v":7,"run_id":"r"}\n', "stdin:2: schema version 7 is newer"),
    (RUN + '{"kind":"metrics","v":1}\n', "stdin:2: unexpected 'metrics' record"),
    (RUN + '{"v":1}\n', "stdin:2: not a lalmpipe record"),
    (RUN + '{"kind":"turn","v":1,"run_id":"r"}\n', "stdin:2: turn record: missing field `turn`"),
    (b"\x00\xff\xfe garbage\n", "stdin:1: not UTF-8 text"),
    ("", "stdin:1: empty input"),
    ("\n\n", "stdin:1: empty input"),
])
def test_bad_input_is_one_line_and_keeps_what_was_written(stdin, message):
    ran = run_main(metrics.main, [], stdin)
    assert ran.code == 1
    assert ran.err.startswith(f"lalm-metrics: error: {message}"), ran.err
    assert ran.err.count("\n") == 1
    if stdin.startswith(RUN if isinstance(stdin, str) else b"-"):
        assert ran.records[0]["run_id"] == "r"      # the run record already went out


def test_report_asks_for_metrics_not_turns():
    ran = run_main(report.main, [os.path.join(FIXTURES, "llama.in.jsonl")])
    assert ran.code == 1 and "pipe the recording through lalm-metrics first" in ran.err


def test_unknown_fields_and_other_kinds_pass_through():
    src = open(os.path.join(FIXTURES, "llama.in.jsonl")).read().splitlines()
    run_rec = json.loads(src[0])
    run_rec["note"] = {"by": "user script"}
    other = {"kind": "prompt", "v": 1, "id": 1, "tier": "expert", "text": "x", "mine": [1]}
    stdin = json.dumps(run_rec) + "\n" + json.dumps(other) + "\n" + src[1] + "\n"
    recs = run_main(metrics.main, [], stdin).records
    assert recs[0]["note"] == {"by": "user script"} and recs[1] == other


def test_a_missing_file_is_named():
    ran = run_main(metrics.main, ["/nonexistent/run.jsonl"])
    assert ran.code == 1 and ran.err == "lalm-metrics: error: /nonexistent/run.jsonl: No such file or directory\n"


def test_subprocess_pipeline_and_head_end_quietly():
    env = dict(os.environ, PATH=os.path.join(ROOT, "bin") + os.pathsep + os.environ["PATH"])
    p = subprocess.run("lalm-prompts | head -n 2", shell=True, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and p.stderr == ""
    assert [json.loads(line)["id"] for line in p.stdout.splitlines()] == [1, 2]
    fixture = os.path.join(FIXTURES, "llama.in.jsonl")
    p = subprocess.run(f"lalm-metrics {fixture} | lalm-report --format json", shell=True,
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"run", "summary", "reasoning", "tiers", "ceiling", "memory", "depths", "turns"}
    assert doc["summary"]["turns"] == 3 and doc["ceiling"] is None
    p = subprocess.run(f"lalm-metrics {fixture} | head -c 10", shell=True, capture_output=True, env=env)
    assert p.returncode == 0 and p.stderr == b""


def test_without_an_encoding_the_server_counts_remain(monkeypatch, capsys):
    from lalmpipe import tokens
    monkeypatch.setattr(tokens, "ENCODING_NAMES", ("no_such_encoding",))
    tokens.encoder.cache_clear()
    try:
        ran = run_main(metrics.main, [os.path.join(FIXTURES, "llama.in.jsonl")])
    finally:
        tokens.encoder.cache_clear()
    assert ran.code == 0
    assert capsys.readouterr().err.count("no cl100k_base encoding could be loaded") == 1
    rows = ran.records[1:]
    assert [r["completion_tokens"] for r in rows] == [24, 24, 24]
    assert all(r["prompt_tokens"] and r["content_tokens"] is None and r["tokens_source"] is None
               for r in rows)


@pytest.mark.parametrize("command, stdin, message", [
    ("metrics", RUN + '{"kind":"turn","v":1,"run_id":"r","turn":1,"prompt":{},"sent_at":"t",'
                      '"status":"ok","chunks":[[0.1]]}\n', "stdin:2: turn record: chunk 1 is not [t_s, data]"),
    ("metrics", RUN + '{"kind":"turn","v":1,"run_id":"r","turn":1,"prompt":"x","sent_at":"t","status":"ok"}\n',
     "stdin:2: turn record: expected `object`, got `str` at `prompt`"),
    ("metrics", RUN.replace('"model":"m"', '"model":"m","params":{"rule":{"check":"(("}}'),
     "stdin:1: run record: settings.rule.check is not a regular expression"),
    ("report", RUN + '{"kind":"metrics","v":1,"run_id":"r","turn":1,"ttft_s":"fast"}\n',
     "stdin:2: metrics record: expected `float | null`, got `str` at `ttft_s`"),
    ("report", RUN + '{"kind":"metrics","v":1,"turn":1}\n', "stdin:2: metrics record: missing field `run_id`"),
])
def test_wrongly_typed_fields_name_source_and_line(command, stdin, message):
    ran = run_main({"metrics": metrics, "report": report}[command].main, [], stdin)
    assert ran.code == 1 and ran.err.startswith(f"lalm-{command}: error: {message}"), ran.err
    assert ran.err.count("\n") == 1


def test_records_of_kinds_lalmpipe_does_not_know_pass_through():
    note = {"kind": "note", "by": "a user's script"}
    src = open(os.path.join(FIXTURES, "llama.in.jsonl")).read()
    recs = run_main(metrics.main, [], json.dumps(note) + "\n" + src).records
    assert recs[0] == note and recs[1]["kind"] == "run"


def test_counts_must_be_positive():
    for argv in (["--num-rounds", "-1"], ["--num-rounds", "0"], ["--num-rounds", "x"]):
        ran = run_main(prompts.main, argv)
        assert ran.code == 2 and "is not a whole number of 1 or more" in ran.err


class Unread:
    """A stdin that fails whatever reads it, and remembers that something tried."""

    def __init__(self):
        self.used = []

    def __getattr__(self, name):
        self.used.append(name)
        raise OSError(f"stdin.{name} was used")

    def __iter__(self):
        self.used.append("__iter__")
        raise OSError("stdin was read")


@pytest.mark.parametrize("command, argv", [
    (chat, ["--retries", "-1"]),
    (chat, ["--retries", "two"]),
    (chat, ["--timeout", "0"]),
    (chat, ["--timeout", "-5"]),
    (chat, ["--stall-timeout", "0"]),
    (chat, ["--stall-timeout", "nan"]),
    (chat, ["--stall-timeout", "inf"]),
    (chat, ["--probe-max-tokens", "0"]),
    (replay, ["-", "--port", "65536"]),
    (replay, ["-", "--port", "-1"]),
    (replay, ["-", "--speed", "-1"]),
    (report, ["--plot", "run.jpg"]),
    (report, ["--plot", "run"]),
])
def test_a_bad_flag_is_refused_before_any_input_is_read(command, argv):
    stdin, out, err = Unread(), io.StringIO(), io.StringIO()
    code = command.main(argv, stdin=stdin, stdout=out, stderr=err)
    flag = next(a for a in argv if a.startswith("--"))
    errors = [line for line in err.getvalue().splitlines() if ": error: " in line]
    assert code == 2 and stdin.used == [] and out.getvalue() == ""
    assert errors == [err.getvalue().splitlines()[-1]]
    assert errors[0].startswith(f"{command.PROG}: error: argument {flag}: '{argv[-1]}' is not "), errors


def test_the_edges_of_each_flag_are_allowed():
    args = chat.build_parser().parse_args(["--retries", "0", "--timeout", "0.5", "--stall-timeout", "1e-3"])
    assert (args.retries, args.timeout, args.stall_timeout) == (0, 0.5, 0.001)
    assert [replay.build_parser().parse_args(["x", "--port", p]).port for p in ("0", "65535")] == [0, 65535]
    assert replay.build_parser().parse_args(["x", "--speed", "0"]).speed == 0
    assert [report.build_parser().parse_args(["--plot", f]).plot for f in ("a.png", "b.SVG")] == ["a.png", "b.SVG"]


def test_a_closed_pipe_ends_metrics_quietly(tmp_path):
    env = dict(os.environ, PATH=os.path.join(ROOT, "bin") + os.pathsep + os.environ["PATH"])
    fixture = os.path.join(FIXTURES, "llama.in.jsonl")
    big = tmp_path / "big.jsonl"
    run = open(fixture).read()
    # far more output than a pipe buffer holds: forty runs (each its own id: a run read twice is dropped)
    big.write_text("".join(run.replace("cec43a697e1c", f"run{i:08d}") for i in range(40)))
    p = subprocess.run(f"lalm-metrics {big} | head -c 10", shell=True, capture_output=True, env=env)
    assert p.returncode == 0 and p.stderr == b"" and len(p.stdout) == 10
    p = subprocess.run(f"set -o pipefail; lalm-metrics {big} | head -c 10", shell=True,
                       capture_output=True, env=env, executable="/bin/bash")
    assert p.returncode == 0


def test_error_kinds_are_enforced():
    from lalmpipe.records import ERROR_KINDS, Error
    with pytest.raises(ValueError, match="unknown error kind 'bogus'"):
        Error(kind="bogus", message="m")
    assert [Error(kind=k, message="m").kind for k in ERROR_KINDS] == list(ERROR_KINDS)
    turn = ('{"kind":"turn","v":2,"run_id":"r","turn":1,"prompt":{"id":1,"tier":"expert","text":"q"},'
            '"sent_at":"t","status":"error","error":{"kind":"bogus","message":"m"}}\n')
    ran = run_main(metrics.main, [], RUN + turn)
    assert ran.code == 1 and ran.err.startswith("lalm-metrics: error: stdin:2: turn record: ") \
        and "bogus" not in ran.out and "error.kind" in ran.err, ran.err


def test_every_markdown_file_a_module_names_exists():
    import ast
    cited = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "lalmpipe")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                doc = ast.get_docstring(ast.parse(open(path, encoding="utf-8").read())) or ""
                for md in re.findall(r"[\w./-]+\.md\b", doc):
                    cited[f"{os.path.relpath(path, ROOT)}: {md}"] = any(
                        os.path.exists(os.path.join(base, md)) for base in (ROOT, os.path.join(ROOT, "docs")))
    assert [c for c, found in cited.items() if not found] == []
