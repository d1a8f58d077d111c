"""lalmpipe: how a local LLM behaves as its context window fills up."""

__version__ = "0.1.0"
