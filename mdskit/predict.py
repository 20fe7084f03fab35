"""Prediction on individual image files: the work behind ``mdskit predict``.

Each file is read into an RGB image (:mod:`mdskit.medical_io`), wrapped in
an :class:`~mdskit.sample.MdsSample` with the question, and answered by
:func:`mdskit.evaluation.predict`, the function that ``mdskit run`` uses.
The outputs of a case go to ``OUT/NAME/``: ``mask.png``, ``overlay.png``,
``similarity.png``, ``agreement.png``, the mask in the input's own format
(``mask.seg.dcm`` or ``mask.nii.gz``) and ``prediction.json``. ``OUT``
also gets ``predictions.json`` (every record) and ``report.html``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import SEG_TOKEN
from .build import build_model, build_tts
from .checkpoint import checkpoint_step, recover_folder
from .cot import DIAGNOSIS_MARKER
from .errors import CheckpointError, MdskitError
from .evaluation import Prediction, candidate_records, predict
from .medical_io import (DICOM_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, InputImage, read_input_image,
                         write_native_mask)
from .outputs import HEAT_ALPHA, heat_overlay, normalised, overlay, provenance, save_png, write_json
from .report import write_report
from .runs import Workspace
from .sample import MdsSample

logger = logging.getLogger(__name__)

PREDICT_DATASET = "predict"
"""Dataset name of the samples built from files; part of each sample's uid and sampling seed."""

_MARKER = re.compile(re.escape(DIAGNOSIS_MARKER), re.IGNORECASE)
_DIAGNOSIS_END = re.compile(r"[.;\n]")


@dataclass
class PredictSettings:
    """Options of one ``mdskit predict``.

    Attributes:
        method: Method name from ``registry.yaml``.
        images: Input files (PNG, JPEG, BMP, TIFF, DICOM, NIfTI).
        question: The clinical question asked about every image.
        checkpoint: Trained checkpoint folder; None looks in the default
            output folders of ``mdskit train`` and ``mdskit run``.
        ttss: Test-time scaling strategy name.
        out: Output folder, or None to write nothing.
        window: (centre, width) of the intensity window for DICOM and NIfTI.
        frame: Frame of a multi-frame DICOM, or volume of a 4-D NIfTI.
        axis: NIfTI voxel axis that ``slice_index`` indexes.
        slice_index: NIfTI slice along ``axis``.
        labels: Diagnoses the answer is read against; None takes every
            registered dataset adapter's labels.
        num_paths: Overrides the strategy's number of paths.
        temperature: Overrides the strategy's sampling temperature.
        seed: Seed of the sampled paths.
    """

    method: str
    images: list[Path]
    question: str
    checkpoint: Path | None = None
    ttss: str = "none"
    out: Path | None = None
    window: tuple[float, float] | None = None
    frame: int | None = None
    axis: int = 2
    slice_index: int | None = None
    labels: tuple[str, ...] | None = None
    num_paths: int | None = None
    temperature: float | None = None
    seed: int = 0


@dataclass
class CasePrediction:
    """The prediction for one input file, with its record and output files.

    ``prediction`` is None for a case kept from an earlier call with the same
    settings, whose record and files were read back from its folder.
    """

    source: InputImage
    prediction: Prediction | None
    record: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def default_checkpoints(method: str) -> list[Path]:
    """Return the folders searched when no --checkpoint is given: the default outputs of train and run."""
    return [Path("runs") / f"{method}-train" / "checkpoint", Path("runs") / f"{method}-none" / "checkpoint"]


def resolve_checkpoint(method: str, checkpoint: Path | None) -> Path:
    """Return the checkpoint folder to load, or raise CheckpointError that explains how to obtain one."""
    instructions = (f"train one with 'mdskit train {method} --data NAME=PATH' (it is saved to "
           f"runs/{method}-train/checkpoint), or pass --checkpoint OUT/checkpoint of an earlier "
           f"'mdskit train' or 'mdskit run'")
    if checkpoint is not None:
        folder = recover_folder(Path(checkpoint))
        if folder.is_file():
            raise CheckpointError(f"--checkpoint {folder} is a file, not a folder; {instructions}.")
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} not found; {instructions}.")
        checkpoint_step(folder)
        return folder
    for folder in default_checkpoints(method):
        if recover_folder(folder).is_dir():
            logger.info("using checkpoint %s", folder)
            return folder
    searched = ", ".join(str(folder) for folder in default_checkpoints(method))
    raise CheckpointError(f"method '{method}' has no trained checkpoint (searched {searched}); {instructions}.")


def check_question(question: str) -> str:
    """Return the question stripped, or raise MdskitError when it is empty."""
    question = question.strip()
    if not question:
        raise MdskitError("the question is empty; pass the clinical question with --question, for example "
                          "--question 'Segment the lesion and give the diagnosis: benign, malignant or normal.'")
    return question


def registered_labels(workspace: Workspace) -> tuple[str, ...]:
    """Return the diagnoses of every registered dataset adapter, in registration order, without repeats."""
    labels: dict[str, None] = {}
    for name in workspace.components.names("dataset"):
        for label in getattr(workspace.components.get("dataset", name), "label_set", ()):
            labels.setdefault(label, None)
    return tuple(labels)


class Predictor:
    """A method loaded from a checkpoint, with its test-time scaling strategy, ready for files."""

    def __init__(self, settings: PredictSettings, workspace: Workspace | None = None) -> None:
        self.settings = settings
        self.question = check_question(settings.question)
        workspace = workspace or Workspace.load()
        self.spec = workspace.registry.method(settings.method)
        self.strategy = build_tts(settings.ttss, workspace.components, workspace.registry,
                                  settings.num_paths, settings.temperature)
        self.checkpoint = resolve_checkpoint(settings.method, settings.checkpoint)
        self.step = checkpoint_step(self.checkpoint)
        self.model = build_model(self.spec, workspace.components, self.checkpoint)
        self.labels = tuple(settings.labels) if settings.labels else registered_labels(workspace)

    def predict_source(self, source: InputImage) -> Prediction:
        """Answer the question about one image read by :func:`read_input_image`."""
        height, width = source.image.shape[:2]
        sample = MdsSample(case_id=_case_id(source), dataset=PREDICT_DATASET, modality=source.modality,
                           image=source.image, mask=np.zeros((height, width), dtype=bool), label="",
                           label_set=self.labels, question=self.question, source=str(source.path))
        return predict(self.model, sample, self.strategy, seed=self.settings.seed)

    def describe(self) -> dict[str, Any]:
        """Return the method, checkpoint and strategy part of every record."""
        return {"method": self.spec.name, "prompt_module": self.spec.prompt.type if self.spec.prompt else None,
                "checkpoint": str(self.checkpoint), "checkpoint_step": self.step, "ttss": self.settings.ttss,
                "tts_params": self.strategy.params(),
                "labels": list(self.labels), "seed": self.settings.seed}


def _case_id(source: InputImage) -> str:
    name = source.path.name
    for suffix in (*NIFTI_SUFFIXES, *DICOM_SUFFIXES, *RASTER_SUFFIXES):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[:-len(suffix)]
            break
    for key in ("frame", "slice"):
        if key in source.selection and (source.selection.get("frames", 2) > 1 or key == "slice"):
            name += f"@{key}{source.selection[key]}"
    return name


def split_answer(text: str) -> tuple[str, str | None]:
    """Split a generated answer into its chain of thought and the free text after ``Diagnosis:``.

    The chain of thought is the text before the marker (the whole text
    without one), with ``[SEG]`` removed.
    """
    marker = _MARKER.search(text)
    if marker is None:
        return text.replace(SEG_TOKEN, "").strip(), None
    rest = text[marker.end():]
    end = _DIAGNOSIS_END.search(rest)
    diagnosis = (rest[:end.start()] if end else rest).replace(SEG_TOKEN, "").strip()
    return text[:marker.start()].replace(SEG_TOKEN, "").strip(), diagnosis or None


def build_record(source: InputImage, prediction: Prediction, seconds: float,
                 predictor_description: dict[str, Any]) -> dict[str, Any]:
    """Build the JSON record of one prediction (outputs are added when written)."""
    selection = prediction.selection
    chain, diagnosis_text = split_answer(selection.text)
    mask = prediction.mask
    record: dict[str, Any] = {
        "input": source.describe(),
        "question": prediction.sample.question,
        **predictor_description,
        "text": selection.text,
        "chain_of_thought": chain,
        "diagnosis": selection.diagnosis,
        "diagnosis_text": diagnosis_text,
        "failure": selection.failure,
        "chosen": selection.chosen,
        "mask_area_pixels": int(mask.sum()),
        "mask_area_fraction": round(float(mask.mean()), 6) if mask.size else 0.0,
        "similarity_map": _similarity_note(prediction, predictor_description.get("prompt_module")),
        "agreement": _agreement_summary(prediction),
        "seconds": round(seconds, 3),
        "candidates": candidate_records(prediction),
    }
    return record


def _similarity_note(prediction: Prediction, prompt_module: str | None) -> dict[str, Any]:
    if prompt_module is None:
        return {"available": False, "reason": "the method has no prompt module, so no similarity map is computed"}
    if prediction.similarity is None:
        return {"available": False, "reason": f"no path generated {SEG_TOKEN}, so the prompt module did not run"}
    values = prediction.similarity.detach().float().cpu()
    return {"available": True, "of": "the first [SEG] token of the first decoded path that has one",
            "min": round(float(values.min()), 4), "max": round(float(values.max()), 4)}


def _agreement_summary(prediction: Prediction) -> dict[str, Any] | None:
    agreement = prediction.selection.agreement
    if agreement is None:
        return None
    values = agreement.detach().float().cpu().numpy()
    mask = prediction.mask
    inside = float(values[mask].mean()) if mask.any() else None
    return {"mean_in_mask": None if inside is None else round(inside, 4),
            "masks": sum(candidate.decoded and candidate.seg_found for candidate in prediction.candidates)}


def case_folder_name(source: InputImage, used_names: set[str]) -> str:
    """Name the output folder of a case after its file, unique within one call."""
    base = re.sub(r"[^\w.@-]+", "_", _case_id(source)).strip("._") or "image"
    name, number = base, 2
    while name in used_names:
        name, number = f"{base}-{number}", number + 1
    used_names.add(name)
    return name


def write_case_outputs(folder: Path, source: InputImage, prediction: Prediction, record: dict[str, Any],
                       method: str) -> dict[str, Path]:
    """Write the mask, overlays, native mask and record of one case into ``folder``."""
    image, mask = source.image, prediction.mask
    files = {"image": folder / "image.png", "mask": folder / "mask.png", "overlay": folder / "overlay.png"}
    save_png(files["image"], image)
    save_png(files["mask"], mask)
    save_png(files["overlay"], overlay(image, mask))
    if prediction.similarity is not None:
        similarity = normalised(prediction.similarity.detach().float().cpu().numpy())
        files["similarity"] = folder / "similarity.png"
        save_png(files["similarity"], heat_overlay(image, similarity))
    if prediction.selection.agreement is not None:
        agreement = prediction.selection.agreement.detach().float().cpu().numpy()
        files["agreement"] = folder / "agreement.png"
        # Pixels that no fused path marks keep the image as it is.
        save_png(files["agreement"], heat_overlay(image, agreement, alpha=HEAT_ALPHA * (agreement > 0)))
    native, reason = write_native_mask(folder, source, mask, method)
    if native is not None:
        files["native_mask"] = native
    record["native_mask_note"] = reason
    files["record"] = folder / "prediction.json"
    record["outputs"] = {key: str(path) for key, path in files.items()}
    write_json(files["record"], record)
    return files


def prepare_out_folder(out: Path) -> None:
    """Create the output folder, or raise MdskitError when it is a file or cannot be created."""
    if out.exists() and not out.is_dir():
        raise MdskitError(f"--out {out} is a file, not a folder; pass a folder path (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MdskitError(f"--out folder {out} could not be created ({error.strerror}); pass a folder in a "
                          "writable location.") from error


def predict_files(settings: PredictSettings, workspace: Workspace | None = None,
                  on_case: Callable[[CasePrediction], None] | None = None) -> list[CasePrediction]:
    """Predict every file of ``settings.images`` and write the outputs when ``settings.out`` is set.

    Every input is read and the output folder checked before the model
    loads, so a bad file or ``--out`` fails before any compute. A case's
    ``seconds`` covers reading and predicting it, not loading the model or
    writing the outputs. A case already written to ``settings.out`` with
    the same settings is read back instead of predicted again.
    """
    check_question(settings.question)
    sources = []
    for path in settings.images:
        started = time.perf_counter()
        source = read_input_image(path, window=settings.window, frame=settings.frame, axis=settings.axis,
                                  slice_index=settings.slice_index)
        sources.append((source, time.perf_counter() - started))
    if settings.out is not None:
        prepare_out_folder(settings.out)
    predictor = Predictor(settings, workspace)
    description = predictor.describe()
    cases: list[CasePrediction] = []
    used_names: set[str] = set()
    try:
        for source, read_seconds in sources:
            folder = None if settings.out is None else settings.out / case_folder_name(source, used_names)
            case = None if folder is None else load_written_case(folder, source, predictor.question, description)
            if case is None:
                case = _predict_case(predictor, source, read_seconds, description, folder)
            cases.append(case)
            if on_case is not None:
                on_case(case)
    finally:
        # An interrupted or failed batch still gets the summary of the cases done.
        if settings.out is not None and cases:
            write_summary(settings.out, cases, settings.seed, predictor)
    return cases


def _predict_case(predictor: Predictor, source: InputImage, read_seconds: float, description: dict[str, Any],
                  folder: Path | None) -> CasePrediction:
    started = time.perf_counter()
    prediction = predictor.predict_source(source)
    seconds = read_seconds + time.perf_counter() - started
    record = build_record(source, prediction, seconds, description)
    case = CasePrediction(source, prediction, record)
    if folder is not None:
        case.files = write_case_outputs(folder, source, prediction, record, predictor.spec.name)
    return case


def load_written_case(folder: Path, source: InputImage, question: str,
                      description: dict[str, Any]) -> CasePrediction | None:
    """Return the case stored in ``folder`` by an earlier call with the same input and settings, else None.

    The stored record must match the input's description, the question and
    every method, checkpoint and strategy setting, and each output file it
    lists must exist.
    """
    path = folder / "prediction.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        logger.warning("predicting %s again because %s does not read (%s)", source.path, path, error)
        return None
    expected = _as_json({"input": source.describe(), "question": question, **description})
    if any(record.get(key) != value for key, value in expected.items()):
        return None
    files = {key: Path(value) for key, value in record.get("outputs", {}).items()}
    if not files or not all(file.is_file() for file in files.values()):
        return None
    logger.info("keeping the prediction for %s from %s", source.path, path)
    return CasePrediction(source, None, record, files)


def _as_json(value: Any) -> Any:
    """Return ``value`` as it reads back from the JSON that :func:`write_json` writes."""
    return json.loads(json.dumps(value, default=str))


def write_summary(out: Path, cases: list[CasePrediction], seed: int, predictor: Predictor) -> None:
    """Write ``predictions.json`` (every record and the provenance) and ``report.html`` for the cases done."""
    write_json(out / "predictions.json",
               {"predictions": [case.record for case in cases],
                "provenance": provenance(seed, predictor.model.device)})
    write_report(out / "report.html", [(case.record, case.files) for case in cases])
