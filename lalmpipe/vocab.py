"""The closed vocabularies of the records: a turn's status, a failure's kind, whose a count is.

Each is one enum whose members are the strings the records carry (a member compares
equal to its string, and is written as it), with the questions the code asks of it.
"""
from __future__ import annotations

import enum


class _Words(str, enum.Enum):
    """A member is its string: printed, formatted and compared as the record writes it."""
    __str__ = str.__str__

    def __format__(self, format_spec: str) -> str:
        return str.__format__(self, format_spec)


class Status(_Words):
    """How a turn or a probe ended."""
    OK = "ok"
    ERROR = "error"
    INTERRUPTED = "interrupted"


class ErrorKind(_Words):
    """Why a request failed."""
    CONTEXT_OVERFLOW = "context_overflow"   # refused as too long, or cut when the window filled
    HTTP = "http"                           # another HTTP error
    CONNECTION = "connection"               # no answer: refused, reset, closed
    TIMEOUT = "timeout"                     # the answer stalled
    STREAM = "stream"                       # the stream ended before it finished
    EMPTY = "empty"                         # HTTP 200 with no events
    INTERRUPTED = "interrupted"             # the user stopped the run

    @property
    def ends_context(self) -> bool:
        """Whether the failure is the context breaking (the run's ceiling): an overflow, a
        stall, or an empty 200 (how llama-cpp-python answers an over-long prompt)."""
        return self in (ErrorKind.CONTEXT_OVERFLOW, ErrorKind.TIMEOUT, ErrorKind.EMPTY)


class CountSource(_Words):
    """Whose a token count is."""
    SERVER = "server"                       # the server's usage
    ESTIMATE = "estimate"                   # the client's cl100k count of what was sent
    TIKTOKEN = "tiktoken"                   # the client's cl100k count of an answer
    SERVER_TIKTOKEN = "server+tiktoken"     # the server's total, split by the client's counts
    SERVER_UNCACHED = "server-uncached"     # the server counted only what it had not cached
    SERVER_CACHED = "server+cached"         # that count plus the cached_tokens it gave beside it

    @property
    def is_estimate(self) -> bool:
        """Whether the count is the client's own, not the server's."""
        return self in (CountSource.ESTIMATE, CountSource.TIKTOKEN)

    @property
    def is_whole_prompt(self) -> bool:
        """Whether a prompt count is the server's count of the whole prompt."""
        return self in (CountSource.SERVER, CountSource.SERVER_CACHED)


# a report's context unit when the server did not count every turn
CLIENT_CONTEXT = "client (cl100k estimate)"
