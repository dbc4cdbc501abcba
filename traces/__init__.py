"""Routing traces: the format, its readers and writers, importers, generators and statistics."""

from moesim.traces.errors import (
    CorruptTraceFileError,
    DuplicateExpertError,
    ExpertIdRangeError,
    GateWeightError,
    ImportFormatError,
    MissingMetadataError,
    ShapeMismatchError,
    TraceError,
)
from moesim.traces.io import load, load_any, save, save_any
from moesim.traces.trace import DECODE, PAD, PREFILL, Trace, TraceMeta, make_trace, validate_trace

__all__ = [
    "DECODE", "PAD", "PREFILL", "CorruptTraceFileError", "DuplicateExpertError", "ExpertIdRangeError",
    "GateWeightError", "ImportFormatError", "MissingMetadataError", "ShapeMismatchError", "Trace",
    "TraceError", "TraceMeta", "load", "load_any", "make_trace", "save", "save_any", "validate_trace",
]
