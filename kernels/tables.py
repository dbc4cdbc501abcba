"""Every table the project writes, through one library (pandas).

Two kinds of table go through it:

* **Report tables** (:func:`frame`, :func:`write`, :func:`markdown`, :func:`html`, :func:`text`): CSV,
  parquet, markdown, HTML and the terminal text of the same frame, so the views of a table cannot
  disagree. Columns keep their first-seen order; integers stay integers where a value is missing
  (nullable dtypes, so a missing ``cache.l1_experts`` does not turn ``128`` into ``128.0``); a
  column whose values mix numbers and text is written as text; NaN is shown as missing.
* **Data tables** (:func:`write_data`, :func:`read_data`): the trace statistics and the weight
  analysis, which readers load back. One file, parquet when pyarrow is installed, else CSV; every
  row must have exactly the table's columns; values come back as they went in (ints as ints, NaN
  and infinities kept, CSV floats written to round-trip).

This module sits in the lowest floor (``kernels/``) so that ``traces/`` and ``kernels/`` can write
tables without importing from the floors above; ``bench/`` uses it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from moesim.kernels.files import atomic_path, atomic_write_text

Rows = Sequence[Mapping[str, Any]]


def frame(rows: Rows, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A DataFrame of ``rows`` with ``columns`` (default: every key, in first-seen order)."""
    if columns is None:
        cols: list[str] = []
        for r in rows:
            cols.extend(k for k in r if k not in cols)
    else:
        cols = list(columns)
    data = {c: [_cell(r.get(c)) for r in rows] for c in cols}
    df = pd.DataFrame(data, columns=cols, dtype=object)
    for c in cols:
        df[c] = _typed(df[c])
    return df


def _cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _typed(col: pd.Series) -> pd.Series:
    """One dtype per column: nullable int / float / bool where every value agrees, text otherwise."""
    values = [v for v in col if v is not None]
    if not values:
        return col.astype("string")
    if all(isinstance(v, bool) for v in values):
        return col.astype("boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return col.astype("Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return col.astype("Float64")
    return pd.Series([None if v is None else str(v) for v in col], index=col.index, dtype="string", name=col.name)


def write(rows: Rows, out_dir: str | Path, name: str, *, columns: Sequence[str] | None = None,
          parquet: bool = True) -> list[Path]:
    """``<name>.csv`` always, ``<name>.parquet`` too when pyarrow is installed and ``parquet``; atomic."""
    df = frame(rows, columns)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{name}.csv"]
    atomic_write_text(written[0], df.to_csv(index=False, lineterminator="\n"))
    if parquet and have_pyarrow():
        with atomic_path(out / f"{name}.parquet") as tmp:
            df.to_parquet(tmp, index=False)
        written.append(out / f"{name}.parquet")
    return written


def csv_text(rows: Rows, columns: Sequence[str] | None = None) -> str:
    return frame(rows, columns).to_csv(index=False, lineterminator="\n")


def _shown(rows: Rows, columns: Sequence[str], headers: Mapping[str, str] | None, digits: int) -> pd.DataFrame:
    df = frame(rows, columns)
    shown = pd.DataFrame({(headers or {}).get(c, c): [_fmt(v, digits) for v in df[c]] for c in df.columns},
                         columns=[(headers or {}).get(c, c) for c in df.columns])
    return shown


def _fmt(value: Any, digits: int) -> str:
    if value is None or value is pd.NA:
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return str(value)


def markdown(rows: Rows, columns: Sequence[str], headers: Mapping[str, str] | None = None, digits: int = 4) -> str:
    """A GitHub markdown table (numbers to ``digits`` significant digits, ``-`` where missing)."""
    return _shown(rows, columns, headers, digits).to_markdown(index=False, tablefmt="github")


def html(rows: Rows, columns: Sequence[str], headers: Mapping[str, str] | None = None, digits: int = 4,
         table_id: str | None = None) -> str:
    """An HTML ``<table>`` (escaped) with class ``data``."""
    return _shown(rows, columns, headers, digits).to_html(index=False, classes="data", border=0, table_id=table_id,
                                                          escape=True)


def text(rows: Rows, columns: Sequence[str], headers: Mapping[str, str] | None = None, digits: int = 4) -> str:
    """Aligned plain text for a terminal."""
    return _shown(rows, columns, headers, digits).to_string(index=False)


def constant_columns(rows: Rows, columns: Sequence[str]) -> list[str]:
    """The columns that take one value in every row (they belong in the context, not the table)."""
    return [c for c in columns if len({repr(r.get(c)) for r in rows}) <= 1]


# ---- data tables ---------------------------------------------------------------------------------

#: Column kinds a data table may declare, and the pandas dtype each is written and read with.
KINDS = {"int": "int64", "float": "float64", "str": "string", "bool": "bool"}
_NAN = "nan"  # how a CSV data table writes a missing float (pandas' default, "", would read back as text)


def have_pyarrow() -> bool:
    """Whether parquet can be written here (pyarrow and its parquet module import)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def write_data(rows: Rows, path: str | os.PathLike[str], columns: Sequence[str] | None = None, *,
               kinds: Mapping[str, str] | None = None, parquet: bool | None = None) -> Path:
    """Write a data table atomically: ``path`` with suffix ``.parquet`` (when ``parquet``, by default
    when pyarrow is installed) or ``.csv``; the written path is returned.

    ``columns`` default to the first row's keys (then ``rows`` must not be empty); every row must
    have exactly those keys, in that order. ``kinds`` (column -> ``int``/``float``/``str``/``bool``)
    fixes a column's type, so an empty table keeps its schema; other columns take the type of
    their values.
    """
    cols = list(columns) if columns is not None else list(rows[0]) if rows else None
    if cols is None:
        raise ValueError(f"{path}: no rows to write")
    for i, r in enumerate(rows):
        if list(r) != cols:
            raise ValueError(f"{path}: row {i} has columns {list(r)}, expected {cols}")
    df = pd.DataFrame.from_records(list(rows), columns=cols) if rows else pd.DataFrame(columns=cols)
    df = df.astype({c: KINDS[k] for c, k in (kinds or {}).items() if c in cols})
    use_parquet = have_pyarrow() if parquet is None else parquet
    out = Path(path).with_suffix(".parquet" if use_parquet else ".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    if use_parquet:
        with atomic_path(out) as tmp:
            df.to_parquet(tmp, index=False)
    else:
        atomic_write_text(out, df.to_csv(index=False, lineterminator="\n", na_rep=_NAN))
    return out


def read_data(path: str | os.PathLike[str], kinds: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The rows of a table written by :func:`write_data`, with Python values (CSV values get their
    types back from ``kinds`` where given, else from what they look like)."""
    p = Path(path)
    if p.suffix == ".parquet":
        df = pd.read_parquet(p)
    else:
        kinds = dict(kinds or {})
        text_cols = [c for c, k in kinds.items() if k == "str"]
        # Only a numeric column's "nan" is missing; a text column keeps every string as written.
        na = {c: [_NAN] for c in pd.read_csv(p, nrows=0).columns if c not in text_cols}
        df = pd.read_csv(p, keep_default_na=False, na_values=na,
                         dtype={c: KINDS[k] for c, k in kinds.items()} or None)
    return df.to_dict("records")
