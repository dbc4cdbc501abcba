"""Exceptions raised for bad traces.

Every error names the file (or ``<memory>`` for a trace built in code), the field and the first bad
position, so a user can find the problem without a debugger.
"""

from __future__ import annotations

from typing import Any


class TraceError(ValueError):
    """Base class: a trace (in memory or on disk) breaks the format's rules."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 index: Any = None) -> None:
        self.file = file or "<memory>"
        self.field = field
        self.index = index
        where = self.file
        if field is not None:
            where += f": field '{field}'"
        if index is not None:
            where += f" at {_format_index(index)}"
        super().__init__(f"{where}: {message}")
        self.reason = message


def _format_index(index: Any) -> str:
    if isinstance(index, tuple):
        return "[" + ", ".join(str(int(i)) if not isinstance(i, str) else i for i in index) + "]"
    return f"[{index}]"


class ExpertIdRangeError(TraceError):
    """An expert id outside ``[0, num_experts)`` that is not the ``-1`` pad."""


class DuplicateExpertError(TraceError):
    """The same expert id twice in one ``(step, layer)`` row."""


class ShapeMismatchError(TraceError):
    """A tensor's shape or dtype disagrees with the other tensors or with the metadata."""


class GateWeightError(TraceError):
    """A gate weight that is NaN, infinite or negative."""


class MissingMetadataError(TraceError):
    """A required metadata key is absent or cannot be parsed."""


class CorruptTraceFileError(TraceError):
    """A trace file that is truncated, not safetensors, or whose header is unreadable."""


class ImportFormatError(TraceError):
    """A foreign routing file (npz, jsonl, csv...) that does not have the expected form."""
