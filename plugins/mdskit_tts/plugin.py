"""Registers the first-party test-time scaling strategies with mdskit."""

from __future__ import annotations

from mdskit.plugins import hookimpl

from .greedy import Greedy
from .self_consistency import SelfConsistency


@hookimpl
def mdskit_tts_strategies() -> list[type]:
    """Return the 'none' and 'self-consistency' strategy classes."""
    return [Greedy, SelfConsistency]
