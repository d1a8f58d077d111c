"""lalm-report: the degradation summary by hand, plots, comparison, progress lines."""
import io
import json
import os

import pytest

from conftest import ROOT, prompts_jsonl, run_main
import msgspec

from lalmpipe import aggregate, chat, metrics, report
from lalmpipe.render.columns import cell
from lalmpipe.records import Metrics, Recall, Run
from regen_golden import FIXTURES


def row(turn, ctx, ttft, tps, tier="foundations", reasoning=0, completion=100, status="ok"):
    return Metrics(run_id="r", turn=turn, tier=tier, status=status, context_tokens=ctx, ttft_s=ttft,
                   decode_tps=tps, reasoning_tokens=reasoning, completion_tokens=completion,
                   has_reasoning=reasoning > 0, prompt_tokens=ctx - completion, truncated=False)


ROWS = [row(1, 1000, 0.2, 100.0), row(2, 2000, 0.4, 90.0), row(3, 3000, 0.6, 80.0, "expert", 50),
        row(4, 4000, 0.8, 44.0, "expert", 20), row(5, 5000, 1.0, 40.0, "expert", 0)]


def test_degradation_summary_by_hand():
    s = msgspec.to_builtins(aggregate.summarize(ROWS))
    assert s["ttft_slope_s_per_1k_tokens"] == pytest.approx(0.2)        # 0.2 s more per 1,000 tokens
    # five turns: the first two and the last two (three each would share the middle one)
    assert s["decode_tps_start"] == pytest.approx(95.0)
    assert s["decode_tps_end"] == pytest.approx(42.0)
    assert s["decode_ratio_end_to_start"] == pytest.approx(42 / 95, abs=1e-3)
    assert s["decode_half_speed_at_context_tokens"] == 4000             # 44 < 95 / 2
    assert (s["turns"], s["ok"], s["max_context_tokens"]) == (5, 5, 5000)
    tiers = {t["tier"]: t for t in msgspec.to_builtins(aggregate.by_tier(ROWS))}
    assert tiers["foundations"]["reasoning_token_share"] == 0
    assert tiers["expert"]["reasoning_token_share"] == pytest.approx(70 / 300, abs=1e-3)
    assert tiers["expert"]["reasoning_turn_share"] == pytest.approx(2 / 3, abs=1e-3)
    assert tiers["expert"]["ttft_mean_s"] == pytest.approx(0.8)
    assert aggregate.reasoning_summary(ROWS).by_tier == {"foundations": 0.0, "expert": 0.233}


def metrics_of(name):
    return run_main(metrics.main, [os.path.join(FIXTURES, name)]).out


@pytest.mark.parametrize("ext, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".svg", b"<?xml")])
def test_plots_for_one_run_and_for_several(tmp_path, ext, magic):
    one, two = metrics_of("llama.in.jsonl"), metrics_of("dialects.in.jsonl")
    for name, stdin in (("one", one), ("two", one + two)):
        path = tmp_path / f"{name}{ext}"
        ran = run_main(report.main, ["--plot", str(path), "--format", "markdown"], stdin)
        assert ran.code == 0, ran.err
        data = path.read_bytes()
        assert data.startswith(magic) and len(data) > 20_000
        assert f"![context growth]({path})" in ran.out
    assert run_main(report.main, ["--plot", str(tmp_path / "x.jpg")], one).code == 2


def test_names_are_drawn_as_written_never_read_as_mathtext(tmp_path):
    run, *rows = metrics_of("llama.in.jsonl").splitlines()
    named = json.dumps({**json.loads(run), "model": "qwen $\\frac{1}{$ 8b"}) + "\n" + "\n".join(rows)
    for ext in (".png", ".svg"):
        ran = run_main(report.main, ["--plot", str(tmp_path / f"named{ext}")], named)
        assert ran.code == 0, ran.err
        assert (tmp_path / f"named{ext}").stat().st_size > 20_000


def run_and_rows(run_id, rows):
    run = {"kind": "run", "v": 1, "run_id": run_id, "started_at": "t", "tool": {}, "base_url": "u", "model": "m"}
    return "".join(json.dumps(r) + "\n" for r in [run] + [{**r.to_dict(), "run_id": run_id} for r in rows])


def test_each_column_keeps_one_format_by_its_unit():
    rows = [row(1, 1000, 0.2, 98.8), row(2, 2000, 0.25, 104.9), row(3, 3000, 120.5, 9.0)]
    text = run_main(report.main, [], run_and_rows("r", rows)).out.splitlines()
    cells = [line.split() for line in text[3:6]]
    # rates to a tenth of a token a second, seconds to the millisecond, whatever their size
    assert [(c[4], c[6]) for c in cells] == [("0.200", "98.8"), ("0.250", "104.9"), ("120.500", "9.0")]
    md = run_main(report.main, ["--format", "markdown"], run_and_rows("r", rows)).out
    assert "| 1 | foundations | ok | 1000 | 0.200 | - | 98.8 | 100 | 0 | - |" in md
    assert "| 2 | foundations | ok | 2000 | 0.250 | - | 104.9 | 100 | 0 | - |" in md
    assert "| foundations | 3 | 40.317 | 70.9 | 3000 | 0.000 | 0.000 |" in md   # the tiers
    other = [row(1, 1000, 0.5, 90.0), row(2, 2000, 0.5, 94.0)]
    table = {r[0]: r[1:] for r in json.loads(run_main(report.main, ["--format", "json"], run_and_rows(
        "r", rows) + run_and_rows("o", other)).out)["comparison"]}
    # with so few turns decode starts at the first turn
    assert table["decode start tok/s"] == ["98.8", "90.0"] and table["TTFT mean s"] == ["40.317", "0.500"]


def test_comparison_of_two_recorded_runs():
    stdin = metrics_of("llama.in.jsonl") + metrics_of("dialects.in.jsonl")
    doc = json.loads(run_main(report.main, ["--format", "json"], stdin).out)
    assert [r["run"]["model"] for r in doc["runs"]] == ["smollm2-135m", "scripted"]
    table = {row[0]: row[1:] for row in doc["comparison"]}
    assert table["model"] == ["smollm2-135m", "scripted"]
    assert table["server"] == ["llama.cpp", doc["runs"][1]["run"]["base_url"]]
    assert table["turns ok"] == ["3/3", "5/5"]
    assert table["ceiling"] == ["none", "none"]
    assert table["TTFT s per 1k tok"] == [cell(r["summary"]["ttft_slope_s_per_1k_tokens"],
                                                      "ttft_slope_s_per_1k_tokens") for r in doc["runs"]]
    text = run_main(report.main, [], stdin).out
    assert "Comparison" in text and "decode end/start" in text


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.timing
def test_live_progress_on_a_terminal_only(api_key):
    from scripted import ForkedServer, stream
    with ForkedServer(lambda i, b: stream("reasoning_content", n_reasoning=5, n_content=30,
                                          ttft_s=0.05, rate_tps=100)[0]) as srv:
        argv = ["--base-url", srv.base_url, "--model", "scripted"]
        tty = Terminal()
        assert chat.main(argv, io.BytesIO(prompts_jsonl(["a", "b"]).encode()), io.StringIO(), tty) == 0
        piped = run_main(chat.main, argv, prompts_jsonl(["a", "b"]))
    lines = [l.split("\x1b[K")[-1] for l in tty.getvalue().split("\n") if l]
    assert lines[0].startswith("turn 1/2 [foundations] ctx 85 tok  TTFT 0.05 s")
    assert "tok/s  reasoning 5 tok  ~0m0" in lines[0] and lines[0].endswith("s left")
    assert lines[1].startswith("turn 2/2 [foundations] ctx 85 tok")
    assert "chunks, 0." in tty.getvalue()          # the live counter while streaming
    assert piped.err == ""                         # nothing on stderr in a pipeline


def test_live_progress_without_usage_shows_the_estimate_the_report_will(api_key, tmp_path):
    from scripted import ForkedServer, stream
    path = str(tmp_path / "run.jsonl")
    with ForkedServer(lambda i, b: stream("no_usage", n_content=30, ttft_s=0.05, rate_tps=100)[0]) as srv:
        argv = ["--base-url", srv.base_url, "--model", "scripted", "--output", path]
        assert run_main(chat.main, argv, prompts_jsonl(["a"])).code == 0
        # resumed on a terminal: the second turn's line counts the first turn's history too
        tty = Terminal()
        assert chat.main([*argv, "--resume"], io.BytesIO(prompts_jsonl(["a", "b", "c"]).encode()),
                         io.StringIO(), tty) == 0
    with open(path) as fp:
        rows = [r for r in run_main(metrics.main, [], fp.read()).records if r["kind"] == "metrics"]
    assert [r["context_tokens_source"] for r in rows] == ["estimate"] * 3
    assert rows[0]["context_tokens"] < rows[1]["context_tokens"] < rows[2]["context_tokens"]
    lines = [l.split("\x1b[K")[-1] for l in tty.getvalue().split("\n") if "] ctx " in l]
    assert len(lines) == 2
    for line, row in zip(lines, rows[1:]):
        assert f"ctx ≈ {row['context_tokens']:,} tok  TTFT {row['ttft_s']:.2f} s  {row['decode_tps']:.1f} tok/s" in line


def test_a_round_of_probes_shows_on_a_terminal(tmp_path, api_key):
    from scripted import FACTS, ForkedServer, scripted_model
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(FACTS))
    with ForkedServer(scripted_model) as srv:
        tty = Terminal()
        argv = ["--base-url", srv.base_url, "--model", "scripted", "--probe-every", "2", "--facts", str(facts)]
        assert chat.main(argv, io.BytesIO(prompts_jsonl(["a", "b", "c"]).encode()), io.StringIO(), tty) == 0
    lines = [l.split("\x1b[K")[-1] for l in tty.getvalue().split("\n") if l]
    assert [l.split(" [")[0] for l in lines[:2]] == ["turn 1/3", "turn 2/3"]
    assert lines[2].startswith("turn 2: asked 2 planted facts in 0.") and lines[2].endswith(" s")
    assert lines[3].startswith("turn 3/3 [foundations]") and len(lines) == 4
    live = tty.getvalue()
    assert live.index("turn 2: asking planted fact 1 of 2") < live.index("turn 2: asking planted fact 2 of 2") \
        < live.index("turn 2: asked 2")


# ---- what a new user tripped over ----

EXAMPLE_RUN = os.path.join(ROOT, "docs", "examples", "smollm2.jsonl")


def test_the_same_run_given_twice_is_counted_once():
    once_ = run_main(metrics.main, [EXAMPLE_RUN])
    twice = run_main(metrics.main, [EXAMPLE_RUN, EXAMPLE_RUN])
    assert twice.code == 0 and twice.out == once_.out
    assert twice.err == (f"lalm-metrics: warning: {EXAMPLE_RUN}: 9 records already read from {EXAMPLE_RUN} "
                         f"dropped ({EXAMPLE_RUN}:1 repeats {EXAMPLE_RUN}:1, ...)\n")
    one = json.loads(run_main(report.main, ["--format", "json"], once_.out).out)
    both = run_main(report.main, ["--format", "json", "-", "-"], once_.out + once_.out)
    assert json.loads(both.out) == one and one["summary"]["turns"] == 8
    assert "9 records already read from stdin dropped" in both.err


def rows_jsonl(*rows):
    run = Run(run_id="r", started_at="t", tool={}, base_url="http://h/v1", model="m")
    return "".join(json.dumps(r) + "\n" for r in [run.to_dict()] + [x.to_dict() for x in rows])


def test_one_rule_counts_failed_and_interrupted_turns_in_every_sentence():
    stdin = rows_jsonl(row(1, 1000, 0.2, 50.0), row(2, 2000, 0.3, 45.0),
                       Metrics(run_id="r", turn=3, status="interrupted", error_kind="interrupted"))
    text = run_main(report.main, [], stdin).out
    assert "Turns        3: 2 ok, 0 failed, 0 truncated, 1 interrupted" in text
    assert "Ceiling      No ceiling found in 3 turns (1 interrupted); the largest" in text
    stdin = rows_jsonl(row(1, 1000, 0.2, 50.0), Metrics(run_id="r", turn=2, status="error", error_kind="http"),
                       Metrics(run_id="r", turn=3, status="interrupted", error_kind="interrupted"))
    text = run_main(report.main, [], stdin).out
    assert "Turns        3: 1 ok, 1 failed, 0 truncated, 1 interrupted" in text
    assert "No ceiling found in 3 turns (1 failed for reasons other than the context, 1 interrupted)" in text


def test_an_answer_cut_by_max_tokens_is_not_judged_on_the_rule(api_key):
    from scripted import ForkedServer, _chunk, sse
    rule = {"text": "End with -- X.", "check": "-- X\\s*\\Z"}
    answers = [("Fine. -- X", "stop"), ("Cut before the end", "length"), ("No marker.", "stop")]

    def answer(i, body):
        text, finish = answers[i]
        return sse((0.01, _chunk({"content": text})), (0.02, _chunk({}, finish=finish)), (0.03, "[DONE]"))
    with ForkedServer(answer) as srv:
        ran = run_main(chat.main, ["--base-url", srv.base_url, "--model", "scripted", "-q"],
                       prompts_jsonl(["a", "b", "c"]))
    records = [json.loads(x) for x in ran.out.splitlines()]
    records[0]["settings"]["rule"] = rule     # as --probe-every sets it
    m = run_main(metrics.main, [], "".join(json.dumps(r) + "\n" for r in records))
    rows = [r for r in m.records if r["kind"] == "metrics"]
    assert [(r["hit_max_tokens"], r["rule_kept"]) for r in rows] == [(False, True), (True, None), (False, False)]
    text = run_main(report.main, [], m.out).out
    assert ("Rule         kept in 1 of 2 answers judged; first broken at turn 3 ("
            in text) and "1 answer cut by max_tokens before the rule's line could come, not judged" in text


def test_with_few_turns_decode_start_and_end_are_the_first_and_last():
    rows = [row(1, 1000, 0.2, 43.0), row(2, 2000, 0.3, 38.0), row(3, 3000, 0.4, 32.4)]
    s = aggregate.summarize(rows)
    assert (s.decode_tps_start, s.decode_tps_end, s.decode_ratio_end_to_start) == (43.0, 32.4, 0.753)
    s = aggregate.summarize(rows + [row(4, 4000, 0.5, 30.0)])      # halves: two and two
    assert (s.decode_tps_start, s.decode_tps_end) == (40.5, 31.2)
    assert aggregate.summarize(rows[:1]).decode_tps_end is None      # one turn: no change to tell


def test_the_effective_context_never_exceeds_the_largest_context_measured():
    rows = [row(1, 1000, 0.2, 50.0), row(2, 2000, 0.3, 45.0)]
    # each probe's own request holds its question and answer on top of the turn it followed
    recalls = [Recall(run_id="r", after_turn=t, fact_id="f", expected="x", answer="x", correct=True,
                      context_tokens=ctx + 40, turns_since_stated=30) for t, ctx in ((1, 1000), (2, 2000))]
    m = aggregate.memory(rows, recalls, None)
    assert [r.context_tokens for r in m.rounds] == [1000, 2000]
    assert m.effective_context_tokens == 2000 == aggregate.summarize(rows).max_context_tokens


def test_a_plot_that_cannot_be_written_is_refused_in_words_before_any_input(tmp_path):
    ran = run_main(report.main, ["--plot", str(tmp_path / "no" / "run.png")], "")
    assert (ran.code, ran.err) == (1, f"lalm-report: error: cannot write --plot {tmp_path}/no/run.png: "
                                      f"no such folder {tmp_path}/no\n")


def test_a_plot_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    ran = run_main(report.main, ["--plot", str(tmp_path / "run.png")], "")
    assert (ran.code, ran.err) == (1, "lalm-report: error: --plot needs matplotlib, which is not installed: "
                                      "pip install 'lalmpipe[plot]'\n")


def test_every_report_names_the_model_the_server_served():
    served = Run(run_id="r", started_at="t", tool={}, base_url="http://h/v1", model="smollm2-135m",
                 served_model="qwen2.5-coder-0.5b")
    other = Run(run_id="s", started_at="t", tool={}, base_url="http://h/v1", model="smollm2-135m")
    stdin = "".join(json.dumps(r) + "\n" for r in [served.to_dict(), row(1, 1000, 0.2, 50.0).to_dict(),
                                                  other.to_dict(), Metrics(run_id="s", turn=1).to_dict()])
    text = run_main(report.main, [], stdin).out
    assert text.startswith("qwen2.5-coder-0.5b at http://h/v1 (run r)")
    assert "model               qwen2.5-coder-0.5b  smollm2-135m" in text
    csv_head = run_main(report.main, ["--depths", "--format", "csv"], stdin).out.splitlines()[1]
    assert csv_head.startswith("r,qwen2.5-coder-0.5b,warm,")
    from browser import parse
    page = parse(run_main(report.main, ["--format", "html"], stdin).out)
    identity = dict(zip([e.text() for e in page.find("dl", "identity").find_all("dt")],
                        [e.text() for e in page.find("dl", "identity").find_all("dd")]))
    assert (identity["model"], identity["model asked for"]) == ("qwen2.5-coder-0.5b", "smollm2-135m")
