"""The model a run measures is the one the server serves: a model the server does not
list is refused before any request, and the run record names the model served, as
the server lists it and as its stream names it."""
import json

import pytest

from conftest import prompts_jsonl, run_main
from lalmpipe import chat
from lalmpipe.serverinfo import served_name
from scripted import ForkedServer, sse

QWEN = "qwen2.5-coder-0.5b"
FOLDER = "/srv/cache/models/smollm2-135m-hf"      # transformers serve lists its model's folder


def answering_as(model):
    """A server that, like llama-server, ignores the request's model and names its own in every chunk."""
    def answer(i, body):
        def chunk(delta, finish=None):
            return json.dumps({"object": "chat.completion.chunk", "model": model,
                               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        return sse((0.01, chunk({"role": "assistant"})), (0.02, chunk({"content": "An answer."})),
                   (0.03, chunk({}, "stop")), (0.04, "[DONE]"))
    return answer


def chat_with(srv, *argv, prompts=("a", "b", "c")):
    return run_main(chat.main, ["--base-url", srv.base_url, *argv], prompts_jsonl(list(prompts)))


def test_a_model_the_server_does_not_list_is_refused_before_any_request(api_key):
    with ForkedServer(answering_as(QWEN), models=[QWEN]) as srv:
        ran = chat_with(srv, "--model", "smollm2-135m")
        sent = srv.requests
    assert (ran.code, ran.out, sent) == (2, "", [])
    assert ran.err == (f"lalm-chat: error: --model 'smollm2-135m': the server at {srv.base_url} "
                       f"serves '{QWEN}', not 'smollm2-135m'\n")


def test_the_run_records_the_model_served(api_key):
    with ForkedServer(answering_as(QWEN), models=[QWEN]) as srv:
        asked = chat_with(srv, "--model", QWEN)
        listed = chat_with(srv)
    for ran in asked, listed:
        assert ran.code == 0, ran.err
        run = ran.records[0]
        assert (run["model"], run["served_model"]) == (QWEN, QWEN)
        assert "served" not in ran.err


def test_a_model_listed_under_a_folder_is_asked_for_by_the_name_the_server_lists(api_key):
    with ForkedServer(answering_as(FOLDER), models=[FOLDER]) as srv:
        alone = chat_with(srv, "-q")                            # make demo: no model given
        named = chat_with(srv, "--model", "smollm2-135m-hf")
        sent = [r["body"]["model"] for r in srv.requests]
    assert sent == [FOLDER] * 6
    for ran in alone, named:
        assert ran.code == 0, ran.err
        assert (ran.records[0]["model"], ran.records[0]["served_model"]) == (FOLDER, FOLDER)
    assert named.err.splitlines()[0] == f"lalm-chat: --model 'smollm2-135m-hf': the server lists it as '{FOLDER}'"


def test_a_stream_that_names_another_model_is_warned_of_once_and_recorded(api_key):
    with ForkedServer(answering_as("qwen3-8b-q4"), models=["qwen3-8b"]) as srv:
        ran = chat_with(srv, "--model", "qwen3-8b")
    assert ran.code == 0, ran.err
    run = ran.records[0]
    assert (run["model"], run["served_model"]) == ("qwen3-8b", "qwen3-8b-q4")
    warning = "lalm-chat: turn 1: the server answered as model 'qwen3-8b-q4', not 'qwen3-8b' as asked\n"
    assert ran.err.count("answered as model") == 1 and warning in ran.err


def test_a_server_that_lists_no_model_is_taken_at_its_streams_word(api_key):
    unlisted = {"/v1/models": {"object": "list", "data": []}, "/models": {"object": "list", "data": []}}
    with ForkedServer(answering_as(QWEN), routes=unlisted) as srv:
        ran = chat_with(srv, "--model", "any-name")
    assert ran.code == 0, ran.err
    run = ran.records[0]
    assert (run["model"], run["server"]["models"], run["served_model"]) == ("any-name", [], QWEN)
    assert "the server answered as model 'qwen2.5-coder-0.5b', not 'any-name' as asked" in ran.err


@pytest.mark.parametrize("asked, listed, served", [
    (QWEN, [QWEN], QWEN),
    ("smollm2-135m", [QWEN], None),
    ("smollm2-135m-hf", [FOLDER], FOLDER),                    # transformers serve: its folder
    ("qwen3", ["qwen3:latest", "llama3.2:3b"], "qwen3:latest"),  # Ollama: a name without a tag is :latest
    ("qwen3-8b", ["qwen/qwen3-8b", "google/gemma-3-12b"], "qwen/qwen3-8b"),  # LM Studio: publisher/model
    ("gemma", ["a/gemma", "b/gemma"], None),                  # two folders of that name: which one?
    ("qwen", [QWEN], None),                                   # a prefix is another name
])
def test_served_name(asked, listed, served):
    assert served_name(asked, listed) == served
