"""Every table a report writes, through one library (pandas): CSV, parquet, markdown, HTML and the
terminal text of the same frame, so the four views of a table cannot disagree.

Rows come in as dicts (the shape :mod:`bench.aggregate` and the plots use); columns keep their
first-seen order; integers stay integers where a value is missing (nullable dtypes, so a missing
``cache.l1_experts`` does not turn ``128`` into ``128.0``); a column whose values mix numbers and
text is written as text.
"""

from __future__ import annotations

import math
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
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            return written
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
