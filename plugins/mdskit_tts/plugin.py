"""Registers the first-party test-time scaling strategies with mdskit."""

from __future__ import annotations

from mdskit.plugins import hookimpl

from .best_of_n import BestOfN
from .greedy import Greedy
from .oracle import Oracle
from .self_consistency import PromptEnsemble, RegionPerturbation, SelfConsistency


@hookimpl
def mdskit_tts_strategies() -> list[type]:
    """Return the first-party strategy classes, the ground-truth 'oracle' among them."""
    return [Greedy, SelfConsistency, BestOfN, RegionPerturbation, PromptEnsemble, Oracle]
