"""Registry of weight formats: every module in this package that exposes ``FORMATS`` is discovered.

A module registers one or more names (``FORMATS = {"mxfp4": ..., "mxfp4-rceil": ...}``); modules
whose name starts with an underscore and modules without ``FORMATS`` (helpers, checkpoint layouts)
are skipped. Discovery runs once, on the first lookup, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import pkgutil

from moesim.kernels.formats.base import FormatError, QuantFormat

__all__ = ["FormatError", "QuantFormat", "get_format", "list_formats"]

_REGISTRY: dict[str, QuantFormat] = {}
_OWNER: dict[str, str] = {}


def _discover() -> dict[str, QuantFormat]:
    if _REGISTRY:
        return _REGISTRY
    found: dict[str, QuantFormat] = {}
    owner: dict[str, str] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        formats = getattr(module, "FORMATS", None)
        if formats is None:
            continue
        for name, fmt in formats.items():
            if name in found:
                raise FormatError(f"format name {name!r} is registered by both {owner[name]} and "
                                  f"{module.__name__}")
            if not isinstance(fmt, QuantFormat) or fmt.name != name:
                raise FormatError(f"{module.__name__}.FORMATS[{name!r}] is not a QuantFormat named {name!r}")
            found[name] = fmt
            owner[name] = module.__name__
    _REGISTRY.update(found)
    _OWNER.update(owner)
    return _REGISTRY


def list_formats() -> list[str]:
    """Every registered format name, sorted."""
    return sorted(_discover())


def get_format(name: str) -> QuantFormat:
    """The format registered as ``name``; an unknown name lists the known ones."""
    registry = _discover()
    try:
        return registry[name]
    except KeyError:
        raise FormatError(f"unknown weight format {name!r}; known formats: {', '.join(sorted(registry))}") \
            from None
