"""Entries that need no training: the floor of every table and an oracle ceiling.

- ``empty-mask``: no finding anywhere, with the majority diagnosis.
- ``whole-image``: every pixel marked, with the majority diagnosis.
- ``litemedsam-gt-box``: LiteMedSAM prompted with the bounding box of the
  ground-truth mask (an empty ground truth gets an empty mask), with the
  majority diagnosis. It reads the ground truth at test time, so it is an
  **oracle**: an upper bound for box-prompted LiteMedSAM, never a method.

The majority diagnosis is the most frequent label of each dataset's train
split (ties go to the label listed first in the label set). References are
scored with the same metrics and conventions as ``mdskit run`` and write
the same ``predictions.jsonl`` and ``metrics.json``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .datasets import DatasetAdapter
from .metrics import CONVENTIONS, SampleResult, summarize
from .outputs import append_jsonl, read_jsonl, rewrite_jsonl, write_json
from .registry import Components
from .sample import MdsSample

logger = logging.getLogger(__name__)

ORACLE_REFERENCES = frozenset({"litemedsam-gt-box"})
REFERENCE_NAMES = ("empty-mask", "whole-image", "litemedsam-gt-box")
METRIC_NAMES = ("giou", "ciou", "dice", "accuracy", "macro_f1")

MaskPredictor = Callable[[MdsSample], np.ndarray]


def majority_label(adapter: DatasetAdapter) -> str:
    """Return the most frequent diagnosis of a dataset's train split."""
    counts = Counter(case.label for case in adapter.load_split("train"))
    label_set = list(adapter.label_set)
    return max(label_set, key=lambda label: (counts[label], -label_set.index(label)))


class GroundTruthBoxOracle:
    """LiteMedSAM prompted with the ground-truth box; reads the ground truth, so an oracle."""

    def __init__(self, components: Components) -> None:
        self.decoder = components.get("decoder", "litemedsam")()
        self.decoder.eval()

    @torch.no_grad()
    def __call__(self, sample: MdsSample) -> np.ndarray:
        from mdskit_rvls2m.similarity_prompts import image_box_to_frame, mask_box

        from .prompt import DecoderPrompts

        box = mask_box(torch.from_numpy(np.asarray(sample.mask, dtype=bool)))
        if box is None:
            return np.zeros(sample.image_size, dtype=bool)
        frame = self.decoder.prompt_frame(sample.image_size)
        embeddings = self.decoder.encode_images([sample.image])
        prompts = DecoderPrompts(boxes=torch.tensor([image_box_to_frame(box, frame)], device=embeddings.device))
        sparse = torch.zeros(1, 0, self.decoder.prompt_embed_dim, device=embeddings.device)
        logits = self.decoder(embeddings, sparse, prompts).mask_logits
        return (frame.frame_to_image(logits.float())[0, 0] > 0).cpu().numpy()


def mask_predictor(name: str, components: Components) -> MaskPredictor:
    """Build the mask predictor of a reference by name."""
    if name == "empty-mask":
        return lambda sample: np.zeros(sample.image_size, dtype=bool)
    if name == "whole-image":
        return lambda sample: np.ones(sample.image_size, dtype=bool)
    if name == "litemedsam-gt-box":
        return GroundTruthBoxOracle(components)
    raise ValueError(f"unknown reference '{name}'; choose one of: {', '.join(REFERENCE_NAMES)}")


def run_reference(name: str, adapters: dict[str, DatasetAdapter], samples: list[MdsSample], out: Path,
                  components: Components, provenance: dict[str, Any]) -> dict[str, Any]:
    """Score a reference on ``samples``, appending to ``out/predictions.jsonl`` and resuming from it."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.jsonl"
    requested = {sample.uid for sample in samples}
    done = {record["id"]: record for record in read_jsonl(path) if record.get("id") in requested}
    rewrite_jsonl(path, list(done.values()))
    majority = {dataset: majority_label(adapter) for dataset, adapter in adapters.items()}
    predictor = mask_predictor(name, components) if len(done) < len(samples) else None

    results = []
    for sample in samples:
        record = done.get(sample.uid)
        if record is None:
            started = time.perf_counter()
            mask = predictor(sample)
            seconds = time.perf_counter() - started
            result = SampleResult.from_masks(sample.uid, sample.dataset, sample.label, sample.label_set,
                                             majority[sample.dataset], mask, sample.mask)
            record = reference_record(sample, result, seconds)
            append_jsonl(path, record)
        results.append(SampleResult(sample.uid, sample.dataset, sample.label, sample.label_set,
                                    record["predicted_diagnosis"], record["intersection"], record["union"],
                                    record["predicted_area"], record["true_area"]))

    metric_objects = [components.get("metric", metric)() for metric in METRIC_NAMES]
    metrics = {"method": name, "ttss": "-", "oracle": name in ORACLE_REFERENCES,
               **summarize(results, metric_objects), "conventions": CONVENTIONS,
               "majority_diagnosis": majority, "provenance": provenance}
    write_json(out / "metrics.json", metrics)
    return metrics


def reference_record(sample: MdsSample, result: SampleResult, seconds: float) -> dict[str, Any]:
    """Build a ``predictions.jsonl`` record in the format ``mdskit run`` writes, with no sampled paths."""
    return {"id": sample.uid, "dataset": sample.dataset, "case_id": sample.case_id, "question": sample.question,
            "text": None, "predicted_diagnosis": result.predicted_label, "true_diagnosis": sample.label,
            "iou": result.iou, "dice": result.dice, "intersection": result.intersection, "union": result.union,
            "predicted_area": result.predicted_area, "true_area": result.true_area, "failure": None,
            "chosen": None, "candidates": [], "seconds": round(seconds, 6)}
