"""First-party mdskit plugin: test-time scaling strategies."""

from .candidates import fuse_masks, validate_candidates
from .greedy import Greedy
from .self_consistency import SelfConsistency

__all__ = ["Greedy", "SelfConsistency", "fuse_masks", "validate_candidates"]
