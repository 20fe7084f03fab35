"""First-party mdskit plugin: test-time scaling strategies."""

from .best_of_n import SCORES, BestOfN
from .candidates import fuse_masks, validate_candidates
from .greedy import Greedy
from .oracle import GroundTruthMissingError, Oracle
from .self_consistency import PromptEnsemble, RegionPerturbation, SelfConsistency

__all__ = ["SCORES", "BestOfN", "Greedy", "GroundTruthMissingError", "Oracle", "PromptEnsemble",
           "RegionPerturbation", "SelfConsistency", "fuse_masks", "validate_candidates"]
