"""The 'none' strategy: one greedily decoded path, taken as it is."""

from __future__ import annotations

from collections.abc import Sequence

from mdskit import SEG_TOKEN
from mdskit.errors import ConfigError
from mdskit.tts import Candidate, Selection, TestTimeScaling

from .candidates import empty_mask, validate_candidates


class Greedy(TestTimeScaling):
    """Decode one path greedily and return it without test-time scaling.

    Args:
        num_paths: Must be 1.
        temperature: Ignored, because the single path is decoded greedily.

    Raises:
        ConfigError: ``num_paths`` is not 1.
    """

    name = "none"

    def __init__(self, num_paths: int = 1, temperature: float = 1.0) -> None:
        if num_paths != 1:
            raise ConfigError(
                f"strategy 'none' decodes a single path, so num_paths must be 1, got {num_paths!r}. "
                "Use strategy 'self-consistency' to sample several paths.")
        super().__init__(num_paths=num_paths, temperature=temperature)

    def select(self, candidates: Sequence[Candidate]) -> Selection:
        """Return the single candidate's answer, with ``failure`` set when it lacks a diagnosis or ``[SEG]``.

        The mask is ``mask_logits > 0``, and empty when the text has no
        ``[SEG]``. ``agreement`` is None.

        Raises:
            ValueError: There is not exactly one candidate, or its mask
                logits are not an H x W floating-point tensor.
        """
        if len(candidates) != 1:
            raise ValueError(f"strategy 'none' expects exactly 1 candidate, got {len(candidates)}.")
        (candidate,) = validate_candidates(candidates)

        if candidate.seg_found:
            mask = candidate.mask_logits > 0
        else:
            mask = empty_mask(candidate.mask_logits)

        problems = []
        if candidate.diagnosis is None:
            problems.append("The answer names no valid diagnosis.")
        if not candidate.seg_found:
            problems.append(f"The answer contains no {SEG_TOKEN}, so the mask is empty.")

        return Selection(
            text=candidate.text,
            diagnosis=candidate.diagnosis,
            mask=mask,
            chosen=[candidate.path_index],
            agreement=None,
            failure=" ".join(problems) or None,
        )
