"""What a real model remembers: Qwen2.5-Coder-0.5B-Instruct on the real llama-server
(make server-bin assembles it), probed for the planted facts as its context grows.
A change that breaks the probes or their scoring fails here on a real model, not
only against the scripted server. About a minute and a half on 2 cores."""
import json

import pytest

from conftest import run_main
from lalmpipe import chat, metrics, prompts, report
from lalmpipe.localserver import LocalServer

pytestmark = pytest.mark.real_server

WINDOW_TOKENS = 16384


@pytest.fixture(scope="module")
def qwen():
    with LocalServer("qwen2.5-coder-0.5b", ctx=WINDOW_TOKENS) as srv:
        yield srv


def test_a_real_model_remembers_at_first_and_its_effective_context_is_below_the_window(qwen, api_key):
    p = run_main(prompts.main, ["--num-rounds", "16"])
    c = run_main(chat.main, ["--base-url", qwen.base_url, "-q", "--temperature", "0", "--max-tokens", "64",
                             "--probe-every", "8", "--probe-max-tokens", "32"], p.out)
    assert c.code == 0, c.err
    m = run_main(metrics.main, [], c.out)
    assert m.code == 0, m.err
    recalls = [r for r in m.records if r["kind"] == "recall"]
    # after turn 8 the facts of prompts 4 and 6; after turn 16 those of 10, 11 and 12 too; each in two wordings
    assert [r["after_turn"] for r in recalls] == [8] * 6 + [16] * 16
    assert [r["form"] for r in recalls] == [0] * 3 + [1] * 3 + [0] * 8 + [1] * 8
    assert all(r["status"] == "ok" and r["context_tokens"] > 0 for r in recalls)
    # a short run: every probe counts (the report's default waits 20 turns)
    mem = json.loads(run_main(report.main, ["--format", "json", "--min-fact-age", "0"], m.out).out)["memory"]
    rounds = mem["rounds"]
    print("recall by round:", [(r["after_turn"], r["context_tokens"], r["recall"]) for r in rounds],
          "effective context:", mem["effective_context_tokens"], "of", mem["advertised_window_tokens"])
    assert mem["advertised_window_tokens"] == WINDOW_TOKENS
    assert mem["first_round_recall"] >= 0.8
    # recall falls below 90 % within the run: the effective context is found, not the run's end
    assert any(r["recall"] < 0.9 for r in rounds)
    assert mem["effective_context_tokens"] == rounds[0]["context_tokens"] < rounds[-1]["context_tokens"]
    assert mem["effective_context_tokens"] < WINDOW_TOKENS
