"""lalm-chat refuses what cannot make a run before it sends a request: one line on
stderr naming the flag, the file or the line, and the exit code of its kind."""
from conftest import prompts_jsonl, run_main
from lalmpipe import chat
from scripted import ForkedServer, stream

PROMPTS = ["first question", "second question", "third question"]


def ok(i, body):
    return stream("plain", n_content=3, ttft_s=0.01)[0]


def test_a_repeated_prompt_id_is_refused_with_its_source_and_line_before_any_request(api_key, tmp_path):
    three = tmp_path / "p3.jsonl"
    three.write_text(prompts_jsonl(PROMPTS))
    again = tmp_path / "again.jsonl"
    again.write_text(prompts_jsonl(PROMPTS[:1]))
    with ForkedServer(ok) as srv:
        piped = run_main(chat.main, ["--base-url", srv.base_url, "-q"],
                         prompts_jsonl(PROMPTS) + prompts_jsonl(PROMPTS[:1]))
        files = run_main(chat.main, ["--base-url", srv.base_url, "-q", str(three), str(again)])
        sent = srv.requests
    assert (piped.code, piped.out) == (1, "")
    assert piped.err == ("lalm-chat: error: stdin:4: prompt id 1 again (first at stdin:1): "
                         "a prompt id names one turn, for --resume and --history\n")
    assert (files.code, files.out) == (1, "")
    assert files.err.startswith(f"lalm-chat: error: {again}:1: prompt id 1 again (first at {three}:1)")
    assert sent == []
