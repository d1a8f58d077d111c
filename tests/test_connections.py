"""Connections the server closes: a turn is timed from the moment its request
left on an open connection, and every request tried is counted."""
import statistics

import pytest

from conftest import least_timing_errors
from lalmpipe.replay import Script
from scripted import HANGUP, ForkedServer, stream
from test_chat_scripted import chat_and_measure

pytestmark = pytest.mark.timing

TTFTS = [0.100, 0.130, 0.160, 0.190, 0.220]


def ttft_errors_ms(rows, made) -> dict[str, list[float]]:
    """How far each measured TTFT is from the schedule's, in ms."""
    return {"ttft_ms": [abs(row["ttft_s"] - truth.ttft_s) * 1000 for row, (_, truth) in zip(rows, made)]}


def ttft_right(errors) -> None:
    """At most 1 ms off in the median turn and 5 ms in the worst."""
    ms = errors["ttft_ms"]
    assert statistics.median(ms) <= 1.0 and max(ms) <= 5.0, [round(e, 3) for e in ms]


@pytest.mark.parametrize("closes, connection", [(None, "reused"), ("announced", "new"), ("silent", "new")])
def test_ttft_leaves_out_the_reconnect(closes, connection, api_key):
    def run():
        made = [stream("plain", n_content=10, ttft_s=t) for t in TTFTS]
        with ForkedServer(lambda i, body: made[i][0], closes=closes) as server:
            ran, rows = chat_and_measure(server, [f"question {i}" for i in range(1, 6)])
        turns = ran.records[1:]
        # turn 1 goes on the connection the preflight GET /models opened, if the server kept it
        assert [t["connection"] for t in turns] == [connection] * 5
        assert [row["status"] for row in rows] == ["ok"] * 5
        # a silent close can cross the next request, which then goes again (and counts)
        assert {t["attempts"] for t in turns} <= ({1, 2} if closes == "silent" else {1})
        return ttft_errors_ms(rows, made)
    least_timing_errors(run, ttft_right)


def test_a_request_the_closed_connection_never_delivered_goes_again_and_counts(api_key):
    def run():
        made = [stream("plain", n_content=10, ttft_s=t) for t in TTFTS[:4]]
        scripts = [made[0][0], Script(end=HANGUP), *[script for script, _ in made[1:]]]
        with ForkedServer(lambda i, body: scripts[i]) as server:
            ran, rows = chat_and_measure(server, ["one", "two", "three", "four"])
            requests = server.requests
        turns = ran.records[1:]
        assert [t["status"] for t in turns] == ["ok"] * 4
        assert [t["attempts"] for t in turns] == [1, 2, 1, 1]
        assert [t["connection"] for t in turns] == ["reused", "new", "reused", "reused"]
        assert len(requests) == 5 and requests[1]["body"] == requests[2]["body"]
        return ttft_errors_ms(rows, made)
    least_timing_errors(run, ttft_right)
