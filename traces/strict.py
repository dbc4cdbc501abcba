"""Strict parsing of untrusted input for every trace reader: exact JSON types, number cells, text
decoding, and ``.npy`` / ``.npz`` members read with their sizes bounded before anything is allocated.

Every failure becomes an :class:`~traces.errors.ImportFormatError` (or the ``error`` class a caller
passes) naming the file, the field and the position. Nothing here coerces: a JSON ``true`` is not
the integer 1, the string ``"5"`` is not a number, ``1.9`` is not an expert id, and a ``.npy``
header that claims more bytes than the file holds is refused before its array is allocated.

This module must not know the trace format; :mod:`traces.io` and the importers apply it.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any, NoReturn

import numpy as np
from moesim.traces.errors import ImportFormatError, TraceError

# Deflate cannot expand data by more than about 1032 : 1, so a member that declares more bytes than
# that per compressed byte is a zip bomb or a lie; refusing it bounds every npz read by the file size.
_DEFLATE_MAX_RATIO = 1032
_NPY_MAGIC = b"\x93NUMPY"
_NPY_MAX_HEADER = 10_000  # numpy's own limit for a header it will parse safely
_NPY_READ_BLOCK = 1 << 20
# Array kinds a reader accepts unless it asks for more: signed and unsigned integers and floats.
# Booleans are not numbers here; object, structured, complex and date kinds never hold routing, and
# object arrays would need pickle.
_NUMERIC_KINDS = "iuf"
_KIND_WORDS = {"i": "integers", "u": "integers", "f": "floats", "b": "booleans", "U": "text"}

_INT_CELL = re.compile(r"-?[0-9]+")
_FLOAT_CELL = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# Python's int() and float() accept far more: " 5", "+5", "5_000", Unicode digits, "nan", "inf".
_MAX_INT_DIGITS = 20


def fail(message: str, *, file: str | None, field: str | None = None, index: Any = None,
         error: type[TraceError] = ImportFormatError) -> NoReturn:
    raise error(message, file=file, field=field, index=index)


# ---- text ---------------------------------------------------------------------------------------

def check_file(path: str | os.PathLike[str], *, error: type[TraceError] = ImportFormatError) -> int:
    """The size of a regular file, or an error naming it (missing, a folder, unreadable)."""
    name = str(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        fail("no such file", file=name, error=error)
    except OSError as exc:
        fail(f"cannot read ({exc.strerror or exc})", file=name, error=error)
    if not os.path.isfile(name):
        fail("not a regular file", file=name, error=error)
    return int(st.st_size)


def lines(path: str | os.PathLike[str], *, start: int = 1) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a byte that is not UTF-8 is an error at its line."""
    name = str(path)
    check_file(name)
    try:
        with open(name, "rb") as fh:
            for lineno, raw in enumerate(fh, start=start):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    fail(f"byte {raw[exc.start]:#04x} at column {exc.start + 1} is not UTF-8", file=name,
                         field="line", index=lineno)
    except OSError as exc:
        fail(f"cannot read ({exc.strerror or exc})", file=name)


def read_text(path: str | os.PathLike[str]) -> str:
    """A whole UTF-8 file (its size already bounds the memory)."""
    return "".join(text for _, text in lines(path))


# ---- JSON ---------------------------------------------------------------------------------------

class _DuplicateKeyError(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:  # json.loads would keep the last silently; two values for one field is ambiguous
            raise _DuplicateKeyError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str | bytes, *, file: str | None, field: str | None = None, index: Any = None,
          error: type[TraceError] = ImportFormatError) -> Any:
    """``json.loads`` without its extensions (NaN, Infinity, duplicate keys), every failure located.

    ``index`` locates a value inside a file (a JSONL line); without it, a syntax error is located by
    the line of the document (field ``line``)."""
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        if index is None and field in (None, "json"):
            field, index = "line", exc.lineno
        fail(f"not JSON ({exc.msg} at column {exc.colno})", file=file, field=field, index=index, error=error)
    except RecursionError:
        fail("JSON nested too deeply", file=file, field=field, index=index, error=error)
    except UnicodeDecodeError as exc:
        fail(f"not UTF-8 ({exc.reason} at byte {exc.start})", file=file, field=field, index=index, error=error)
    except ValueError as exc:  # a duplicate key, NaN / Infinity, or an integer of thousands of digits
        fail(f"not valid JSON here ({exc})", file=file, field=field, index=index, error=error)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", float: "a float", int: "an integer", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _outside(lo: int | None, hi: int | None) -> str:
    if lo is None:
        return f"above {hi}"
    if hi is None:
        return f"below {lo}"
    return f"outside [{lo}, {hi}]"


def _got(value: Any) -> str:
    return f"{_type_name(value)} {_show(value)}".rstrip()


def _show(value: Any) -> str:
    """A scalar as JSON, cut to 40 characters; nothing for a list or object (the type says it)."""
    if not isinstance(value, (str, bool, int, float)):
        return ""
    try:
        text = json.dumps(value)
    except ValueError:  # an integer of more digits than Python converts to text
        text = "<a very long integer>"
    return text if len(text) <= 40 else text[:37] + "..."


def json_int(value: Any, *, file: str | None, field: str, index: Any = None, lo: int | None = None,
             hi: int | None = None, error: type[TraceError] = ImportFormatError) -> int:
    """A JSON integer (never a boolean, a float or a string) in ``[lo, hi]``."""
    if type(value) is not int:
        fail(f"must be a JSON integer, got {_got(value)}", file=file, field=field,
             index=index, error=error)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(f"{_show(value)} is {_outside(lo, hi)}", file=file, field=field, index=index, error=error)
    return value


def json_number(value: Any, *, file: str | None, field: str, index: Any = None,
                error: type[TraceError] = ImportFormatError) -> float:
    """A finite JSON number (integer or float; never a boolean or a string)."""
    if type(value) not in (int, float):
        fail(f"must be a JSON number, got {_got(value)}", file=file, field=field,
             index=index, error=error)
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        fail(f"{_show(value)} is not a finite number", file=file, field=field, index=index, error=error)
    return out


def json_list(value: Any, *, file: str | None, field: str, index: Any = None, max_len: int | None = None,
              error: type[TraceError] = ImportFormatError) -> list[Any]:
    if type(value) is not list:
        fail(f"must be a JSON list, got {_got(value)}", file=file, field=field,
             index=index, error=error)
    if max_len is not None and len(value) > max_len:
        fail(f"{len(value)} values exceed the width {max_len}", file=file, field=field, index=index,
             error=error)
    return value


def json_int_list(value: Any, *, file: str | None, field: str, index: Any = None, max_len: int | None = None,
                  lo: int | None = None, hi: int | None = None) -> list[int]:
    items = json_list(value, file=file, field=field, index=index, max_len=max_len)
    for j, v in enumerate(items):
        if type(v) is not int or (lo is not None and v < lo) or (hi is not None and v > hi):
            where = f"item {j}: "
            if type(v) is not int:
                fail(f"{where}must be a JSON integer, got {_got(v)}", file=file, field=field,
                     index=index)
            fail(f"{where}{_show(v)} is {_outside(lo, hi)}", file=file, field=field, index=index)
    return items


def json_number_list(value: Any, *, file: str | None, field: str, index: Any = None,
                     max_len: int | None = None) -> list[float]:
    items = json_list(value, file=file, field=field, index=index, max_len=max_len)
    out = []
    for j, v in enumerate(items):
        if type(v) not in (int, float):
            fail(f"item {j}: must be a JSON number, got {_got(v)}", file=file, field=field,
                 index=index)
        f = float(v) if type(v) is float else _int_to_float(v)
        if not math.isfinite(f):
            fail(f"item {j}: {_show(v)} is not a finite number", file=file, field=field, index=index)
        out.append(f)
    return out


def _int_to_float(v: int) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf


def json_str(value: Any, *, file: str | None, field: str, index: Any = None) -> str:
    if type(value) is not str:
        fail(f"must be a JSON string, got {_got(value)}", file=file, field=field, index=index)
    return value


def json_object(value: Any, *, file: str | None, field: str, index: Any = None,
                error: type[TraceError] = ImportFormatError) -> dict[str, Any]:
    if type(value) is not dict:
        fail(f"must be a JSON object, got {_got(value)}", file=file, field=field,
             index=index, error=error)
    return value


# ---- text cells (CSV) ---------------------------------------------------------------------------

def int_cell(text: str, *, file: str | None, field: str, index: Any = None, lo: int | None = None,
             hi: int | None = None) -> int:
    """A decimal integer written plainly (``-12``): no spaces, signs other than '-', '_' or exponents."""
    if not _INT_CELL.fullmatch(text) or len(text) > _MAX_INT_DIGITS:
        fail(f"not an integer: {text!r}", file=file, field=field, index=index)
    value = int(text)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(f"{value} is {_outside(lo, hi)}", file=file, field=field, index=index)
    return value


def float_cell(text: str, *, file: str | None, field: str, index: Any = None) -> float:
    """A finite decimal number (``0.5``, ``1e-30``, ``-0.0``); never ``nan``, ``inf`` or ``1_0``."""
    if not _FLOAT_CELL.fullmatch(text):
        fail(f"not a number: {text!r}", file=file, field=field, index=index)
    value = float(text)
    if not math.isfinite(value):
        fail(f"{text!r} is not a finite number", file=file, field=field, index=index)
    return value


def _split_cells(text: str, *, file: str | None, field: str, index: Any, max_len: int | None) -> list[str]:
    parts = text.split(" ") if text else []
    if max_len is not None and len(parts) > max_len:
        fail(f"{len(parts)} values exceed the width {max_len}", file=file, field=field, index=index)
    return parts


def int_cells(text: str, *, file: str | None, field: str, index: Any = None, max_len: int | None = None,
              lo: int | None = None, hi: int | None = None) -> list[int]:
    """A cell holding integers separated by single spaces (empty: no values)."""
    return [int_cell(v, file=file, field=field, index=index, lo=lo, hi=hi)
            for v in _split_cells(text, file=file, field=field, index=index, max_len=max_len)]


def float_cells(text: str, *, file: str | None, field: str, index: Any = None,
                max_len: int | None = None) -> list[float]:
    """A cell holding finite numbers separated by single spaces (empty: no values)."""
    return [float_cell(v, file=file, field=field, index=index)
            for v in _split_cells(text, file=file, field=field, index=index, max_len=max_len)]


# ---- .npy / .npz ----------------------------------------------------------------------------------

def _npy_header(fh: Any, *, file: str, field: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, header bytes) of the ``.npy`` stream at ``fh``."""
    head = fh.read(8)
    if len(head) < 8 or head[:6] != _NPY_MAGIC:
        fail("not a .npy array (bad magic)", file=file, field=field)
    version = (head[6], head[7])
    if version == (1, 0):
        fmt, encoding = "<H", "latin1"
    elif version in ((2, 0), (3, 0)):
        fmt, encoding = "<I", "latin1" if version == (2, 0) else "utf8"
    else:
        fail(f".npy version {version[0]}.{version[1]} is not supported", file=file, field=field)
    raw = fh.read(struct.calcsize(fmt))
    if len(raw) < struct.calcsize(fmt):
        fail(".npy header is truncated", file=file, field=field)
    (n,) = struct.unpack(fmt, raw)
    if n > _NPY_MAX_HEADER:
        fail(f".npy header of {n} bytes is larger than {_NPY_MAX_HEADER}", file=file, field=field)
    text = fh.read(n)
    if len(text) < n:
        fail(".npy header is truncated", file=file, field=field)
    try:
        d = ast.literal_eval(text.decode(encoding))
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        fail(".npy header is not a Python literal dict", file=file, field=field)
    if type(d) is not dict or set(d) != {"descr", "fortran_order", "shape"}:
        fail(".npy header must hold exactly descr, fortran_order and shape", file=file, field=field)
    shape, fortran, descr = d["shape"], d["fortran_order"], d["descr"]
    if type(shape) is not tuple or any(type(s) is not int or s < 0 for s in shape):
        fail(f".npy shape {shape!r} is not a tuple of non-negative integers", file=file, field=field)
    if type(fortran) is not bool:
        fail(f".npy fortran_order {fortran!r} is not a boolean", file=file, field=field)
    if type(descr) is not str:
        fail(f".npy dtype {descr!r} is structured; only plain numeric arrays are read", file=file, field=field)
    try:
        dtype = np.dtype(descr)
    except (TypeError, ValueError):
        fail(f".npy dtype {descr!r} is not a dtype", file=file, field=field)
    return shape, fortran, dtype, 8 + len(raw) + n


def read_npy(fh: Any, available: int, *, file: str, field: str, kinds: str = _NUMERIC_KINDS) -> np.ndarray:
    """The array of the ``.npy`` stream ``fh`` holding ``available`` bytes; its header's claims are
    checked against ``available`` before the array is allocated, and only ``kinds`` are accepted."""
    shape, fortran, dtype, header = _npy_header(fh, file=file, field=field)
    if dtype.kind not in kinds or dtype.hasobject:
        allowed = ", ".join(dict.fromkeys(_KIND_WORDS[k] for k in kinds))
        fail(f"dtype {dtype} is not allowed here (only {allowed})", file=file, field=field)
    count = math.prod(shape)  # Python integers: no overflow, unlike np.prod
    nbytes = count * dtype.itemsize
    if nbytes != available - header:
        fail(f"shape {shape} of {dtype} needs {nbytes} bytes but the array holds {available - header}",
             file=file, field=field)
    buf = np.empty(count, dtype)
    view = memoryview(buf.view(np.uint8).reshape(-1)) if count else memoryview(b"")
    got = 0
    while got < nbytes:
        chunk = fh.read(min(_NPY_READ_BLOCK, nbytes - got))
        if not chunk:
            fail(f"array data ends after {got} of {nbytes} bytes", file=file, field=field)
        view[got:got + len(chunk)] = chunk
        got += len(chunk)
    if not dtype.isnative:
        buf = buf.astype(dtype.newbyteorder("="))
    return buf.reshape(shape, order="F" if fortran else "C")


def load_npy(path: str | os.PathLike[str], *, field: str = "array", kinds: str = _NUMERIC_KINDS) -> np.ndarray:
    name = str(path)
    size = check_file(name)
    try:
        with open(name, "rb") as fh:
            return read_npy(fh, size, file=name, field=field, kinds=kinds)
    except OSError as exc:
        fail(f"cannot read ({exc.strerror or exc})", file=name)


class NpzMembers:
    """The members of an ``.npz`` read one at a time, each bounded by its own declared size, which
    is bounded in turn by its compressed size (deflate's largest expansion) and so by the file."""

    def __init__(self, path: str | os.PathLike[str], *, error: type[TraceError] = ImportFormatError) -> None:
        self.file = str(path)
        self._error = error
        size = check_file(self.file, error=error)
        try:
            self._zip = zipfile.ZipFile(self.file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error) as exc:
            fail(f"not an npz (zip) archive ({exc})", file=self.file, error=error)
        self._infos: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in self._zip.infolist():
            if not info.filename.endswith(".npy"):
                self.close()
                fail(f"member {info.filename!r} is not a .npy array", file=self.file, field=info.filename, error=error)
            name = info.filename[:-4]
            if name in self._infos:
                self.close()
                fail("member appears twice", file=self.file, field=name, error=error)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                self.close()
                fail(f"compression method {info.compress_type} is not used by numpy", file=self.file, field=name, error=error)
            limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _DEFLATE_MAX_RATIO)
            if info.file_size > limit + 1024:
                self.close()
                fail(f"member declares {info.file_size} bytes from {info.compress_size} compressed: a zip bomb "
                     "or a corrupt archive", file=self.file, field=name, error=error)
            total += info.compress_size
            self._infos[name] = info
        if total > size:
            self.close()
            fail(f"members declare {total} compressed bytes in a {size}-byte file", file=self.file, error=error)

    @property
    def names(self) -> list[str]:
        return list(self._infos)

    def read(self, name: str, *, kinds: str = _NUMERIC_KINDS) -> np.ndarray:
        info = self._infos[name]
        try:
            with self._zip.open(info) as fh:
                return read_npy(fh, info.file_size, file=self.file, field=name, kinds=kinds)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, struct.error, NotImplementedError,
                zlib.error) as exc:
            if isinstance(exc, TraceError):
                raise
            fail(f"cannot decompress ({exc})", file=self.file, field=name, error=self._error)

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> NpzMembers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
