"""Exceptions for a simulation that cannot run as configured."""

from __future__ import annotations


class ConfigError(ValueError):
    """A replay or policy configuration that makes no sense (the message says which knob and why)."""
