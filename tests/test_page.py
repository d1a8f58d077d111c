"""lalm-report --format html: one self-contained page, its numbers those of the JSON report,
model text shown as text and never run, checked in headless Chromium."""
import io
import json
import os
import re
import subprocess
from importlib import resources

import pytest

from browser import dump_dom, have_chromium, parse, screenshot
from conftest import ROOT, prompts_jsonl, run_main
import msgspec

from lalmpipe import aggregate, chat, metrics, report
from lalmpipe.records import Metrics
from lalmpipe.render import plot
from lalmpipe.render.inline_svg import DRAWING, inline_svg
from lalmpipe.render.sentences import ceiling_sentence, summary_lines
from lalmpipe.render.tables import turn_cell
from lalmpipe.results import load
from lalmpipe.jsonl import read_records
from scripted import ForkedServer, deltas_script
from synthetic import synthetic_run

EXAMPLE = os.path.join(ROOT, "docs", "examples", "smollm2.jsonl")
PWNED = "document.title='pwned'"
# what a model, a server or a prompt file may write, meant to become markup on the page
HOSTILE = (f"<script>{PWNED}</script>", f'<img src=x onerror="{PWNED}">', "</textarea>",
           "</details>", "</pre></summary></div>", f"<a href=\"javascript:{PWNED}\">click</a>",
           f"[click](javascript:{PWNED})", "{{ 7*7 }}", "{% raw %}", "<!-- ]]> -->",
           f"<svg onload=\"{PWNED}\"></svg>")
HOSTILE_TEXT = " ".join(HOSTILE)
MODEL = f'<img src=x onerror="{PWNED}"> {{{{ 7*7 }}}} $\\frac{{1}}{{$'
TIER = f"</details><script>{PWNED}</script>"
ERROR_BODY = json.dumps({"error": {"message": HOSTILE_TEXT, "type": "invalid_request_error"}})

needs_chromium = pytest.mark.skipif(not have_chromium(), reason="needs Debian's chromium "
                                    "(make test installs it: apt-get install chromium)")


def _reply(i, body):
    """Turn 1 thinks and answers, turn 2 is refused with a hostile body, turn 3 answers."""
    from lalmpipe.replay import Script
    if i == 1:
        return Script(status=400, body=ERROR_BODY.encode(), headers={"Content-Type": "application/json"})
    deltas = [{"reasoning_content": "Thinking: " + HOSTILE_TEXT}] if i == 0 else []
    script = deltas_script(deltas + [{"content": f"Answer {i + 1}:\n"}, {"content": HOSTILE_TEXT}])
    # the stream names the hostile model too: it is the model the run measured
    named = ('"model": ' + json.dumps(MODEL)).encode()
    return Script(events=[(t, e.replace(b'"model": "scripted"', named)) for t, e in script.events])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A scripted run whose prompts, reasoning, answers, error body, model and a tier are hostile."""
    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as env:
        env.delenv("OPENAI_BASE_URL", raising=False)
        with ForkedServer(_reply, models=[MODEL]) as server:
            ran = run_main(chat.main, ["--base-url", server.base_url, "--model", MODEL, "-q",
                                       "--on-error", "continue", "--system", HOSTILE_TEXT],
                           prompts_jsonl([f"Question {n}: {HOSTILE_TEXT}" for n in (1, 2, 3)]))
    assert ran.code == 0, ran.err
    recording = tmp / "hostile.jsonl"
    recording.write_text(ran.out)
    measured = run_main(metrics.main, [str(recording)])
    rows = [json.loads(line) for line in measured.out.splitlines()]
    rows[-1]["tier"] = TIER      # a metrics record names any tier it likes
    metrics_jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    turns = [r for r in ran.records if r["kind"] == "turn"]
    return metrics_jsonl, str(recording), turns


def html_report(metrics_jsonl, *args):
    ran = run_main(report.main, ["--format", "html", *args], metrics_jsonl)
    assert ran.code == 0, ran.err
    return ran


def json_report(metrics_jsonl):
    return json.loads(run_main(report.main, ["--format", "json"], metrics_jsonl).out)


def example():
    return run_main(metrics.main, [EXAMPLE]).out


def turn_rows(root):
    """The per-turn table: a list of rows, each a list of (shown text, data-v) per cell."""
    return [[(cell.text(), cell.attrs["data-v"]) for cell in row.find("summary").find_all("span")]
            for row in root.find_all("details", "turn")]


def pre_text(element):
    """A <pre>'s text as a browser reads it: its first line break belongs to the markup."""
    text = element.text()
    return text[1:] if text.startswith("\n") else text


def texts_of(root, cls):
    return [pre_text(details.find("pre", cls)) if details.find("pre", cls) else None
            for details in root.find_all("details", "turn")]


# ---- the page's structure, from its source ----

def test_one_row_per_turn_with_the_numbers_of_the_json_report(hostile):
    for metrics_jsonl in (example(), hostile[0]):
        doc = json_report(metrics_jsonl)
        page = parse(html_report(metrics_jsonl).out)
        rows = turn_rows(page)
        assert len(rows) == len(doc["turns"]) == doc["summary"]["turns"]
        for cells, turn in zip(rows, doc["turns"]):
            shown = [c[0] for c in cells]
            assert shown == [turn_cell(msgspec.convert(turn, Metrics), c)
                             for c in ("turn", "tier", "context_tokens", "ttft_s", "prefill_tps",
                                       "decode_tps", "reasoning_tokens", "status")]
            values = [c[1] for c in cells]
            assert int(values[0]) == turn["turn"] and values[1] == turn["tier"]
            for value, key in zip(values[2:7], ("context_tokens", "ttft_s", "prefill_tps",
                                                "decode_tps", "reasoning_tokens")):
                assert (float(value) if value else None) == turn[key]
    example_page = parse(html_report(example()).out)
    assert [c[0] for c in turn_rows(example_page)[0]] == ["1", "foundations", "215", "0.249", "478.4",
                                                          "158.1", "0", "ok"]
    hostile_rows = turn_rows(parse(html_report(hostile[0]).out))
    assert [cells[-1][0] for cells in hostile_rows] == ["ok", "http", "ok"]
    # the scripted server sent no usage: the context sizes are the client's, marked as in the text report
    assert [cells[2][0] for cells in hostile_rows] == [
        f"≈ {t['context_tokens']}" if t["context_tokens"] is not None else "-"
        for t in json_report(hostile[0])["turns"]]
    assert hostile_rows[0][2][0].startswith("≈ ")


def test_the_page_holds_identity_summary_figure_and_tiers():
    ran = html_report(example(), "--texts", EXAMPLE)
    page = parse(ran.out)
    doc = json_report(example())
    identity = dict(zip([e.text() for e in page.find("dl", "identity").find_all("dt")],
                        [e.text() for e in page.find("dl", "identity").find_all("dd")]))
    assert identity["model"] == "smollm2-135m" and identity["run"] == "a8ee7517db5b"
    assert identity["context window"] == "8,192 tokens (llama.cpp /props)"
    assert identity["server"] == "llama.cpp b0-unknown"
    params = [e.text() for e in page.find("dl", "params").find_all("dd")]
    assert params == ["0.7", "96", "low", '{"include_usage": true}']
    summary = [e.text() for e in page.find("dl", "summary").find_all("dd")]
    assert summary == [sentence for _, sentence in summary_lines(load(doc))]
    assert summary[-1] == ceiling_sentence(load(doc))
    [figure] = page.find_all("figure", "plot")
    assert len(figure.find_all("svg")) == 1 and len(figure.find_all("path")) > 100
    tiers = page.find("table", "tiers").find_all("tr")[1:]
    assert [[td.text() for td in tr.find_all("td")] for tr in tiers] == \
        [["foundations", "8", "0.255", "130.3", "1510", "0.000", "0.000"]]
    with open(EXAMPLE, encoding="utf-8") as fp:
        turns = [t for t in map(json.loads, fp) if t["kind"] == "turn"]
    assert texts_of(page, "answer") == [t["content"] for t in turns]
    assert texts_of(page, "prompt") == [t["prompt"]["text"] for t in turns]
    assert "a page of 1" in ran.err and ran.err.endswith("8 turns, 8 with their texts\n")


def test_without_the_recording_the_page_says_the_texts_are_not_included():
    ran = html_report(example())
    page = parse(ran.out)
    assert len(page.find_all("details", "turn")) == 8
    assert page.find("p", "texts-missing") is not None and page.find("pre", "answer") is None
    assert ran.err.endswith("8 turns, 0 with their texts\n")
    other = html_report(example(), "--texts", os.path.join(ROOT, "tests", "fixtures", "llama.in.jsonl"))
    assert "warning: " in other.err and "holds no turn of this run" in other.err
    assert run_main(report.main, ["--texts", EXAMPLE], example()).code == 2     # html only
    assert run_main(report.main, ["--format", "html", "--texts", "-"], example()).code == 2


def test_several_runs_get_the_comparison_and_its_figure():
    two = example() + run_main(metrics.main, [os.path.join(ROOT, "tests", "fixtures",
                                                           "dialects.in.jsonl")]).out
    page = parse(html_report(two).out)
    table = page.find("table", "comparison")
    rows = {tr.find("th").text(): [td.text() for td in tr.find_all("td")] for tr in table.find_all("tr")[1:]}
    assert rows == {row[0]: row[1:] for row in json_report(two)["comparison"][1:]}
    assert len(page.find_all("section", "run")) == 2
    assert len(page.find_all("figure", "plot")) == 3          # the comparison's, and each run's
    ids = [e.attrs["id"] for e in page.iter() if "id" in e.attrs]
    assert len(ids) == len(set(ids))                          # figures never share an id


def test_model_text_is_escaped_in_the_source(hostile):
    metrics_jsonl, recording, turns = hostile
    page = html_report(metrics_jsonl, "--texts", recording).out
    for raw in HOSTILE + (TIER, MODEL):
        if PWNED in raw or "textarea" in raw:
            assert raw not in page
    assert "{{ 7*7 }}" in page and "{% raw %}" in page           # data, never template
    assert len(re.findall(r"<script", page)) == 1
    assert "<img" not in page and "<textarea" not in page and "<a " not in page


def test_a_large_run_renders_collapsed(tmp_path):
    metrics_jsonl, recording_jsonl = synthetic_run(turns=231, answer_chars=6000)
    recording = tmp_path / "synthetic.jsonl"
    recording.write_text(recording_jsonl)
    ran = html_report(metrics_jsonl, "--texts", str(recording))
    page = parse(ran.out)
    rows = page.find_all("details", "turn")
    assert len(rows) == 231 and not any("open" in row.attrs for row in rows)
    assert all(len(pre_text(row.find("pre", "answer"))) > 6000 for row in rows)
    kib = int(re.search(r"a page of ([\d,]+) KiB", ran.err).group(1).replace(",", ""))
    assert kib == round(len(ran.out.encode()) / 1024) and kib > 1500
    # with probes the figure adds the recall panels and the heatmap: eight axes, not four
    [svg] = page.find_all("svg")
    axes = {e.attrs["id"] for e in svg.iter("g") if re.fullmatch(r"r1-axes_\d+", e.attrs.get("id", ""))}
    assert len(axes) == 8
    if have_chromium():
        path = tmp_path / "large.html"
        path.write_text(ran.out)
        assert len(parse(dump_dom(str(path))).find_all("details", "turn")) == 231


# ---- the figures ----

def test_inline_svg_keeps_the_drawing_and_drops_anything_else():
    dirty = ('<?xml version="1.0"?><!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x.dtd">'
             '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
             ' onload="a()">'
             '<metadata><title>t</title></metadata><style>*{x:y}</style><!-- --><script>b()</script><!-- -->'
             '<defs><clipPath id="p1"><rect x="1" onclick="c()"/></clipPath><path id="g1" d="M0 0"/></defs>'
             '<g clip-path="url(#p1)" style="fill: url(#p1)"><use xlink:href="#g1"/>'
             '<use xlink:href="javascript:d()"/><use href="http://example.com/x.svg#y"/>'
             '<rect style="fill: url(http://example.com/z)"/><image xlink:href="data:image/png;base64,AAAA"/>'
             '<foreignObject><div>e</div></foreignObject><text>&lt;script&gt;f()</text>'
             '<a xlink:href="javascript:g()"><path d="M1 1"/></a></g></svg>')
    clean = inline_svg(dirty, "f1-")
    for gone in ("onload", "onclick", "<script", "b()", "<!--", "metadata", "<style", "javascript",
                 "example.com", "foreignObject", "<div", "<a ", "DOCTYPE", "<?xml"):
        assert gone not in clean, gone
    assert 'id="f1-p1"' in clean and 'clip-path="url(#f1-p1)"' in clean
    assert 'style="fill: url(#f1-p1)"' in clean
    assert 'xlink:href="#f1-g1"' in clean and 'xlink:href="data:image/png;base64,AAAA"' in clean
    assert "<text>&lt;script&gt;f()</text>" in clean
    tags = set(re.findall(r"<([A-Za-z]+)", clean))
    assert tags <= DRAWING and {"svg", "g", "clipPath", "rect", "path", "use", "image", "text"} <= tags


def test_names_from_the_records_reach_the_figure_as_drawings_only():
    rows = [json.loads(line) for line in example().splitlines()]
    rows[0]["model"] = MODEL
    stdin = "".join(json.dumps(r) + "\n" for r in rows)
    records = read_records([], io.BytesIO(stdin.encode()), consumes={"run", "metrics", "recall"})
    reports = [aggregate.analyse(*g) for g in report.collect(records)]
    raw = plot.svg(reports)
    assert raw == plot.svg(reports)                           # the same figure, the same ids
    clean = inline_svg(raw, "r1-")
    assert "onerror" in raw and "onerror" not in clean        # only in a comment, which goes
    assert set(re.findall(r"<([A-Za-z]+)", clean)) <= DRAWING


# ---- in a real browser ----

def browse(tmp_path, name, html):
    """Load the page in Chromium: its DOM once loaded, and a screenshot."""
    path = tmp_path / f"{name}.html"
    path.write_text(html, encoding="utf-8")
    png = tmp_path / f"{name}.png"
    screenshot(str(path), str(png))
    return parse(dump_dom(str(path))), png


def assert_not_blank(png):
    import matplotlib.image
    pixels = matplotlib.image.imread(str(png))[:, :, :3]
    inked = (pixels < 0.9).any(axis=2).mean()
    colours = len({tuple(p) for p in (pixels[::7, ::7].reshape(-1, 3) * 255).astype(int).tolist()})
    assert pixels.shape[:2] == (2000, 1280)
    assert inked > 0.03 and colours > 40, (inked, colours)


def assert_nothing_made_from_model_text(dom, page, turns):
    """No element that the page did not write itself; its own script alone ran."""
    script = resources.files("lalmpipe").joinpath("templates", "report.js").read_text(encoding="utf-8")
    assert [s.text() for s in dom.find_all("script")] == [script]
    assert dom.find("title").text() == page.find("title").text()
    assert dom.find_all("img") == [] and dom.find_all("textarea") == [] and dom.find_all("iframe") == []
    assert all(not a.attrs.get("href", "").startswith(("javascript", "http")) for a in dom.find_all("a"))
    assert not [e for e in dom.iter() if any(name.startswith("on") for name in e.attrs)]
    assert len(dom.find_all("details", "turn")) == len(turns)
    assert len(dom.find_all("svg")) == 1 and len(dom.find_all("path")) > 100
    assert dom.find("select", "tier-filter") is not None       # the page's own script did run


@pytest.mark.browser
@needs_chromium
def test_the_shipped_recording_in_a_browser(tmp_path):
    with open(EXAMPLE, encoding="utf-8") as fp:
        turns = [t for t in map(json.loads, fp) if t["kind"] == "turn"]
    html = html_report(example(), "--texts", EXAMPLE).out
    dom, png = browse(tmp_path, "example", html)
    assert_nothing_made_from_model_text(dom, parse(html), turns)
    assert dom.find("title").text() == "lalmpipe: smollm2-135m"
    assert [pre.text() for pre in dom.find_all("pre", "answer")] == [t["content"] for t in turns]
    assert_not_blank(png)
    # with its script not allowed to run, as in a browser without JavaScript, all is there
    blocked = re.sub(r"script-src [^;]+;", "script-src 'none';", html)
    assert blocked != html
    dom, png = browse(tmp_path, "no-script", blocked)
    assert dom.find("select") is None and dom.find("button") is None
    assert [pre.text() for pre in dom.find_all("pre", "answer")] == [t["content"] for t in turns]
    assert [s.text() for s in dom.find("div", "turn-head").find_all("span")] == \
        ["turn", "tier", "context", "TTFT s", "prefill tok/s", "decode tok/s", "reason tok", "status"]
    assert_not_blank(png)


@pytest.mark.browser
@needs_chromium
def test_hostile_text_shows_as_text_and_runs_nothing(hostile, tmp_path):
    metrics_jsonl, recording, turns = hostile
    html = html_report(metrics_jsonl, "--texts", recording).out
    page = parse(html)
    assert page.find("title").text() == "lalmpipe: " + MODEL
    # without its Content-Security-Policy the page must be just as inert: the escaping holds alone
    bare = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    assert bare != html
    for name, variant in (("hostile", html), ("no-csp", bare)):
        dom, png = browse(tmp_path, name, variant)
        assert_nothing_made_from_model_text(dom, page, turns)
        assert dom.find("title").text() != "pwned"
        answers = [pre.text() for pre in dom.find_all("pre", "answer")]
        assert answers == [turns[0]["content"], turns[2]["content"]]
        assert answers[0] == f"Answer 1:\n{HOSTILE_TEXT}"
        assert [pre.text() for pre in dom.find_all("pre", "reasoning")] == [f"Thinking: {HOSTILE_TEXT}"]
        assert [pre.text() for pre in dom.find_all("pre", "prompt")] == \
            [f"Question {n}: {HOSTILE_TEXT}" for n in (1, 2, 3)]
        assert [pre.text() for pre in dom.find_all("pre", "error-body")] == [ERROR_BODY]
        assert [o.text() for o in dom.find("select", "tier-filter").find_all("option")] == \
            ["every tier", "foundations", TIER]
        assert dom.find("h1").text() == "lalmpipe: " + MODEL
        assert_not_blank(png)


# ---- make bench ----

@pytest.mark.make_target
def test_make_bench_writes_the_page_with_the_texts(tmp_path):
    from test_replay import start_replay, stop
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    try:
        done = subprocess.run(["make", "-s", "-o", "install", "bench", f"BIN={ROOT}/bin",
                               f"BASE_URL={url}", "ROUNDS=8", "MAX_TOKENS=96", f"LOGS={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    [page] = tmp_path.glob("lalm_benchmark_run_*.html")
    assert f"page {page}" in done.stderr
    [recording] = tmp_path.glob("lalm_benchmark_run_*Z.jsonl")
    with open(recording, encoding="utf-8") as fp:
        turns = [t for t in map(json.loads, fp) if t["kind"] == "turn"]
    root = parse(page.read_text(encoding="utf-8"))
    assert len(turns) == 8 and texts_of(root, "answer") == [t["content"] for t in turns]


@pytest.mark.make_target
def test_a_failed_make_bench_leaves_no_empty_files_and_says_what_to_do(tmp_path):
    done = subprocess.run(["make", "-s", "-o", "install", "bench", f"BIN={ROOT}/bin", "BASE_URL=http://127.0.0.1:9/v1",
                           "MODEL=m", "ROUNDS=1", f"LOGS={tmp_path}", "CHAT_ARGS=--retries 0 -q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "make bench: the run stopped (see above); no server at the base URL? make server starts" in done.stderr
    assert "cannot connect to http://127.0.0.1:9/v1" in done.stderr
    assert [p for p in tmp_path.iterdir() if p.stat().st_size == 0] == []
    assert not list(tmp_path.glob("*.metrics.jsonl"))


@pytest.mark.make_target
def test_make_bench_of_two_models_prints_where_the_comparison_went(tmp_path):
    from test_replay import start_replay, stop
    proc, url = start_replay(EXAMPLE, "--speed", "0")
    try:
        done = subprocess.run(["make", "-s", "-o", "install", "bench", f"BIN={ROOT}/bin", f"BASE_URL={url}",
                               "MODELS=smollm2-135m smollm2-135m", "ROUNDS=2", "MAX_TOKENS=96", f"LOGS={tmp_path}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        stop(proc)
    assert done.returncode == 0, done.stderr
    [cmp] = tmp_path.glob("lalm_benchmark_compare_*.json")
    stem = str(cmp)[:-len(".json")]
    assert f"comparison {stem}.json, plot {stem}.png, page {stem}.html" in done.stderr
    assert len(list(tmp_path.glob("lalm_benchmark_run_*_1_smollm2-135m.jsonl"))) == 1
