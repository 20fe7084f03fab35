"""Near-duplicate images: grouping them, and dropping groups with conflicting labels.

Public releases such as BUSI contain the same scan more than once, sometimes
cropped by a few rows and sometimes filed under two diagnoses. Splits must
keep such copies together (else the test set leaks into training), and a
scan filed under two diagnoses has no trustworthy label.

Two images are near-duplicates when their 16 x 16 greyscale thumbnails,
each normalised to zero mean and unit variance, have a Pearson correlation
of at least :data:`MIN_CORRELATION`. Groups are the connected components of
that relation, so a chain of near-duplicates forms one group.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image

from mdskit.sample import MdsSample

from .common import natural_key

THUMBNAIL_SIZE = 16

# Measured on a 120-image BUSI subset (longest side 320 px): its four
# near-duplicate pairs correlate at 0.987 or more, distinct scans at 0.928
# or less.
# NOTE: the limit was not checked on the full BUSI release, where more
# distinct pairs may come closer to it.
MIN_CORRELATION = 0.96


def thumbnail_vector(image: np.ndarray) -> np.ndarray:
    """Flattened greyscale thumbnail of an RGB image, normalised to zero mean and unit variance."""
    grey = Image.fromarray(image).convert("L").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX)
    vector = np.asarray(grey, dtype=np.float64).ravel()
    spread = vector.std()
    if spread == 0:
        # A flat image correlates with nothing, so it stays in its own group.
        return np.zeros_like(vector)
    return (vector - vector.mean()) / spread


def _find_root(parents: list[int], index: int) -> int:
    while parents[index] != index:
        parents[index] = parents[parents[index]]
        index = parents[index]
    return index


def assign_near_duplicate_groups(samples: list[MdsSample], min_correlation: float = MIN_CORRELATION) -> int:
    """Set ``group`` on every sample so that near-duplicates share one group.

    The group key is the case id that sorts first (in natural order) among
    the group's members; a case without near-duplicates keeps its own id.
    Each sample's ``meta["near_duplicates"]`` lists the other members.

    Returns:
        The number of groups with more than one member.
    """
    if not samples:
        return 0
    vectors = np.stack([thumbnail_vector(sample.image) for sample in samples])
    correlation = vectors @ vectors.T / vectors.shape[1]
    parents = list(range(len(samples)))
    rows, columns = np.nonzero(np.triu(correlation >= min_correlation, k=1))
    for row, column in zip(rows.tolist(), columns.tolist()):
        parents[_find_root(parents, row)] = _find_root(parents, column)

    members: dict[int, list[MdsSample]] = {}
    for index, sample in enumerate(samples):
        members.setdefault(_find_root(parents, index), []).append(sample)
    shared_groups = 0
    for group in members.values():
        group.sort(key=lambda sample: natural_key(sample.case_id))
        key = group[0].case_id
        for sample in group:
            sample.group = key
            sample.meta["near_duplicates"] = [other.case_id for other in group if other is not sample]
        shared_groups += len(group) > 1
    return shared_groups


def drop_conflicting_groups(samples: list[MdsSample], logger: logging.Logger, dataset: str) -> list[MdsSample]:
    """Remove every case whose group contains more than one label, with one WARNING counting them."""
    labels_by_group: dict[str, set[str]] = {}
    for sample in samples:
        labels_by_group.setdefault(sample.group or sample.case_id, set()).add(sample.label)
    conflicting = {group for group, labels in labels_by_group.items() if len(labels) > 1}
    if not conflicting:
        return samples
    dropped = [sample for sample in samples if (sample.group or sample.case_id) in conflicting]
    logger.warning(
        "%s: dropped %d case(s) in %d near-duplicate group(s) filed under conflicting labels: %s",
        dataset, len(dropped), len(conflicting),
        "; ".join(f"{sample.case_id} ({sample.label})" for sample in dropped))
    return [sample for sample in samples if (sample.group or sample.case_id) not in conflicting]
