"""The errors domain code raises; the command layer (lalmpipe.cli) turns them into exit codes."""
from __future__ import annotations


class InputError(Exception):
    """Bad input: the message already names the source and line."""


class UsageError(Exception):
    """Options that do not go together: exit 2, like argparse."""
