"""Installed like any tool: a wheel of the checkout, in a fresh virtual environment, runs the
whole pipeline from a directory outside the checkout, its prompts and facts read from the
installed package.

Slow (it installs openai, tiktoken and the rest from the package registry, from pip's cache
when it can), so marked `install`: `pytest -m 'not install'` leaves it out.
"""
import contextlib
import json
import os
import re
import select
import shlex
import shutil
import subprocess
import sys
import types
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.install

EXAMPLE = os.path.join(ROOT, "docs", "examples", "smollm2.jsonl")
PROMPTS = os.path.join(ROOT, "prompts", "lalm_prompts.json")
FACTS = os.path.join(ROOT, "prompts", "lalm_facts.json")
REFERENCE = os.path.join(ROOT, "prompts", "lalm_reference.jsonl")
# what a build of the package reads; copied so that building leaves nothing in the checkout
BUILD_INPUTS = ("pyproject.toml", "README.md", "lalmpipe", "prompts")
# nothing from the environment may lead the installed commands back to the checkout or a server
UNSET = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "OPENAI_BASE_URL",
         "OPENAI_API_KEY")
PIP_QUIET = ("-q", "--disable-pip-version-check")


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in UNSET}


def run(args, timeout_s=60, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to success, or fail the test with its stderr."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout_s, **kwargs)
    assert done.returncode == 0, f"{args[0]} exited {done.returncode}:\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "drafts"))
        else:
            shutil.copy(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", *PIP_QUIET, "--no-deps", "-w", dist, src],
        timeout_s=120)
    [built] = dist.glob("lalmpipe-*.whl")
    return built


@pytest.fixture(scope="module")
def venv_bin(wheel, tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", *PIP_QUIET, wheel], timeout_s=180)
    return venv / "bin"


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    """A working directory outside the checkout."""
    return tmp_path_factory.mktemp("elsewhere")


@contextlib.contextmanager
def replaying(venv_bin, cwd):
    """Serve the example recording with the installed lalm-replay; stop it however the block ends.

    Yields an object with the server's `url`; after the block its stderr is in `log`.
    """
    proc = subprocess.Popen([str(venv_bin / "lalm-replay"), EXAMPLE, "--port", "0", "--speed", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=clean_env())
    server = types.SimpleNamespace(url=None, log="")
    first = ""
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        first = proc.stderr.readline() if ready else ""
        found = re.search(r"http://\S+/v1", first)
        assert found, f"lalm-replay did not say where it listens: {first!r}"
        server.url = found.group(0)
        yield server
    finally:
        proc.terminate()
        try:
            rest = proc.communicate(timeout=10)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            rest = proc.communicate()[1]
        server.log = first + rest


def pipeline(venv_bin, *stages) -> str:
    """A shell pipeline of the installed commands, each stage (command, arg, ...)."""
    return "set -o pipefail; " + " | ".join(
        " ".join([shlex.quote(str(venv_bin / stage[0]))] + [shlex.quote(a) for a in stage[1:]])
        for stage in stages)


def recorded_usage_totals(path) -> tuple[int, int]:
    """Sum prompt and completion tokens over the usage chunks of a recording."""
    prompt = completion = 0
    with open(path, encoding="utf-8") as fp:
        for rec in map(json.loads, fp):
            for chunk in rec.get("chunks") or ():
                usage = json.loads(chunk[1]).get("usage") if chunk[1].startswith("{") else None
                if usage:
                    prompt += usage["prompt_tokens"]
                    completion += usage["completion_tokens"]
    return prompt, completion


def test_the_wheel_carries_the_prompts_the_facts_and_the_reference(wheel):
    with zipfile.ZipFile(wheel) as whl:
        for name in (PROMPTS, FACTS, REFERENCE):
            with open(name, "rb") as fp:
                assert whl.read("lalmpipe/data/" + os.path.basename(name)) == fp.read()


def test_the_wheel_carries_the_page_template(wheel):
    with zipfile.ZipFile(wheel) as whl:
        for name in ("report.html.j2", "report.js"):
            with open(os.path.join(ROOT, "lalmpipe", "templates", name), "rb") as fp:
                assert whl.read("lalmpipe/templates/" + name) == fp.read()


def test_installed_report_writes_the_page(venv_bin, elsewhere):
    """From the installed template, with the recording's texts; without matplotlib (not
    installed here: the [plot] extra), the page says it has no figures."""
    from browser import parse
    script = pipeline(venv_bin, ("lalm-metrics", EXAMPLE),
                      ("lalm-report", "--format", "html", "--texts", EXAMPLE))
    done = run(["bash", "-c", script], cwd=elsewhere)
    page = parse(done.stdout)
    with open(EXAMPLE, encoding="utf-8") as fp:
        answers = [rec["content"] for rec in map(json.loads, fp) if rec["kind"] == "turn"]
    assert [pre.text()[1:] for pre in page.find_all("pre", "answer")] == answers
    assert "no figures: matplotlib is not installed" in done.stdout and "<svg" not in done.stdout
    assert done.stderr.endswith("1 run, 8 turns, 8 with their texts\n")


def test_installed_prompts_are_the_shipped_231(venv_bin, elsewhere):
    where = run([venv_bin / "python", "-c", "import lalmpipe; print(lalmpipe.__file__)"], cwd=elsewhere)
    assert where.stdout.startswith(str(venv_bin.parent)), where.stdout
    out = run([venv_bin / "lalm-prompts"], cwd=elsewhere).stdout
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 231
    assert {r["kind"] for r in records} == {"prompt"}
    assert [r["id"] for r in records] == list(range(1, 232))


def test_installed_pipeline_replays_the_example(venv_bin, elsewhere):
    with replaying(venv_bin, elsewhere) as server:
        script = pipeline(venv_bin, ("lalm-prompts", "--num-rounds", "8"),
                          ("lalm-chat", "--base-url", server.url, "-q"), ("lalm-metrics",),
                          ("lalm-report", "--format", "json"))
        report = json.loads(run(["bash", "-c", script], cwd=elsewhere).stdout)
    summary = report["summary"]
    assert (summary["turns"], summary["ok"], summary["errors"]) == (8, 8, 0)
    assert [t["prompt_id"] for t in report["turns"]] == list(range(1, 9))
    assert {t["status"] for t in report["turns"]} == {"ok"}
    assert (summary["prompt_tokens_total"], summary["completion_tokens_total"]) \
        == recorded_usage_totals(EXAMPLE)
    # the installed prompts are the ones the recording was made with
    assert "no recorded turn answers" not in server.log, server.log


def test_installed_chat_finds_its_facts(venv_bin, elsewhere):
    with open(EXAMPLE, encoding="utf-8") as fp:
        first_turn = next(rec for rec in map(json.loads, fp) if rec["kind"] == "turn")
    prompt = json.dumps({"kind": "prompt", "v": 1, **first_turn["prompt"]}) + "\n"
    with replaying(venv_bin, elsewhere) as server:
        out = run([venv_bin / "lalm-chat", "--base-url", server.url, "--probe-every", "1", "-q"],
                  input=prompt, cwd=elsewhere).stdout
    records = [json.loads(line) for line in out.splitlines()]
    with open(FACTS, encoding="utf-8") as fp:
        facts = json.load(fp)
    [run_record] = [r for r in records if r["kind"] == "run"]
    assert run_record["settings"]["rule"] == facts["rule"]
    assert [f["id"] for f in run_record["settings"]["facts"]] == [f["id"] for f in facts["facts"]]
    assert [r["status"] for r in records if r["kind"] == "turn"] == ["ok"]


def test_installed_chat_measures_depths_over_the_shipped_reference(venv_bin, elsewhere):
    # the example recording answers prompts 1-8; the installed reference takes a request to
    # 1k tokens within them, and the replay answers the recorded turn of that prompt
    with replaying(venv_bin, elsewhere) as server:
        out = run(["bash", "-c", pipeline(venv_bin, ("lalm-prompts",),
                                          ("lalm-chat", "--base-url", server.url, "--depths", "1k", "-q"))],
                  cwd=elsewhere).stdout
    records = [json.loads(line) for line in out.splitlines()]
    run_record = records[0]
    [(prompt_id, target)] = run_record["settings"]["depths"]
    assert target == 1024 and 1 < prompt_id <= 8
    assert run_record["settings"]["history"]["run_id"] == "reference"
    assert run_record["settings"]["history"]["answers"] == 231
    assert [(r["prompt"]["id"], r["status"]) for r in records if r["kind"] == "turn"] == [(prompt_id, "ok")]


def test_nothing_is_written_into_the_installed_package_at_run_time(venv_bin, elsewhere):
    package = run([venv_bin / "python", "-c", "import lalmpipe, os; print(os.path.dirname(lalmpipe.__file__))"],
                  cwd=elsewhere).stdout.strip()

    def files():
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(package) for f in fs if "__pycache__" not in d)
    before = files()
    with replaying(venv_bin, elsewhere) as server:
        script = pipeline(venv_bin, ("lalm-prompts", "--num-rounds", "3"),
                          ("lalm-chat", "--base-url", server.url, "-q"), ("lalm-metrics",),
                          ("lalm-report", "--format", "json"))
        doc = json.loads(run(["bash", "-c", script], cwd=elsewhere).stdout)
    env = {**clean_env(), "XDG_CACHE_HOME": str(elsewhere)}
    env.pop("LALM_CACHE", None)
    cache = subprocess.run([str(venv_bin / "python"), "-c", "from lalmpipe.localserver import catalog; "
                            "print(catalog.cache_dir())"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=60).stdout.strip()
    assert files() == before
    assert cache == os.path.join(str(elsewhere), "lalmpipe") and not cache.startswith(package)
    assert doc["summary"]["ttft_slope_ci95"] is not None          # the intervals' libraries came with the wheel
