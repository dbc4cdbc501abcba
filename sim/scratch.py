"""Scratch folders for arrays spilled to disk during a run (next-use times, per-step latencies).

A folder is removed when its run ends, when the process exits or is stopped by SIGTERM / SIGINT,
and, if the process was killed outright (SIGKILL, the OOM killer), by the next run that starts a
scratch folder in the same place: folder names carry the owner's process id, and a folder whose
owner is gone is stale.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PREFIX = "moesim-scratch-"
_live: set[str] = set()
_installed = False
_lock = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(base: str | os.PathLike[str]) -> list[Path]:
    """Remove the scratch folders under ``base`` whose process is gone; return them."""
    removed = []
    for path in Path(base).glob(PREFIX + "*"):
        try:
            pid = int(path.name[len(PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _remove_all() -> None:
    for path in list(_live):
        shutil.rmtree(path, ignore_errors=True)
        _live.discard(path)


def _on_signal(signum: int, frame: Any, previous: Any) -> None:
    _remove_all()
    if callable(previous):
        previous(signum, frame)
    else:  # the default action (terminate), with the scratch already gone
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    atexit.register(_remove_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still cleans up
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if previous in (signal.SIG_IGN,):
            continue
        signal.signal(sig, lambda s, f, prev=previous: _on_signal(s, f, prev))


@contextlib.contextmanager
def scratch_dir(parent: str | os.PathLike[str] | None = None) -> Iterator[str]:
    """A fresh scratch folder under ``parent`` (default: the system's temporary folder)."""
    base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    clean_stale(base)
    with _lock:
        _install()
        path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base)
        _live.add(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        _live.discard(path)


__all__ = ["PREFIX", "clean_stale", "scratch_dir"]
