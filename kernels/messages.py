"""The one line a command prints for a failure: an exception's message joined onto one line, and
the line for an exception no check anticipated. In the lowest floor so that every command (the
formats' analysis, the traces' tools, the simulator's) prints failures the same way.
"""

from __future__ import annotations


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (a message spanning lines is joined with ' | ')."""
    text = str(exc).strip() or type(exc).__name__
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return " | ".join(parts)


def internal_error(exc: BaseException) -> str:
    """The line printed for an exception no check anticipated: its type and message and what to do,
    without the traceback a user cannot act on."""
    if isinstance(exc, MemoryError):
        return "out of memory (the input is larger than this machine can hold)"
    return (f"unexpected {type(exc).__name__}: {one_line(exc)} (if the inputs are valid, this is a bug in "
            "moesim: please report it with the command line)")


__all__ = ["internal_error", "one_line"]
