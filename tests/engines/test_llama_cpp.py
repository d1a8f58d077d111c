"""llama.cpp's llama-server: usage on a chunk with no choices, the window in
/props, HTTP 400 exceed_context_size_error at the window."""
from live import WINDOW_TOKENS, assert_counts_are_the_engines, assert_usage_on_a_chunk_without_choices, run_fixture


run = run_fixture("llama.cpp")


def test_the_counts_are_the_servers_usage(run):
    assert_counts_are_the_engines(run)
    assert_usage_on_a_chunk_without_choices(run)


def test_the_preflight_reads_the_window_from_props(run):
    assert run.run["server"]["software"] == "llama.cpp"
    assert run.run["server"]["context_window"] == WINDOW_TOKENS
    assert run.run["server"]["context_source"] == "llama.cpp /props"


def test_the_long_turn_overflows_the_window(run):
    last = run.rows[-1]
    assert (run.turns[-1]["http_status"], last["status"], last["error_kind"]) == (400, "error", "context_overflow")
    assert run.report["ceiling"]["turn"] == 5 and run.report["ceiling"]["reason"] == "context_overflow"

