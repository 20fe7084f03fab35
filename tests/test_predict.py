"""``mdskit predict`` on DICOM, NIfTI and PNG files with a tiny trained checkpoint.

The checkpoint is a tiny Sim4Seg (a one-layer language model, a 4 x 4
RVLS2M grid, the real LiteMedSAM decoder) trained for one step on one case
of the embedded phantom dataset: enough to load and run every part of the
prediction path, not to give sensible answers. Tests that need a mask and
a similarity map replace the sampled answer texts with a template answer
that holds ``[SEG]``; the teacher-forced pass, RVLS2M, the decoder and the
test-time scaling that follow are the real ones.
"""

from __future__ import annotations

import json
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sample_files import dicom_file, nifti_file

from mdskit.backbone import GeneratedAnswers
from mdskit.cli import main
from mdskit.evaluation import Prediction
from mdskit.medical_io import read_input_image
from mdskit.predict import build_record, split_answer
from mdskit.runs import RunSettings, Workspace, train_only
from mdskit.sample import MdsSample
from mdskit.tts import Selection

QUESTION = "Segment the breast lesion in this ultrasound image and give the diagnosis: benign, malignant or normal."
ANSWER = "Modality: breast ultrasound. Findings: one hypoechoic lesion. Diagnosis: benign. Mask: [SEG]."

TINY_REGISTRY = """
    schema: 1
    methods:
      tiny-sim4seg:
        backbone: {type: llava, hidden_size: 32, num_layers: 1, num_heads: 2,
                   intermediate_size: 64, vocab_size: 400, token_grid: 4, max_new_tokens: 16}
        prompt: {type: rvls2m, grid: 4, top_n: 4}
        decoder: {type: litemedsam, cache_dir: ""}
        cot: {type: template}
        training: {steps: 1, batch_size: 1, lr: 3.0e-3, checkpoint_every: 1}
    tts:
      self-consistency: {num_paths: 2, temperature: 1.0}
"""


@pytest.fixture(scope="session")
def registry(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("predict-registry") / "registry.yaml"
    path.write_text(textwrap.dedent(TINY_REGISTRY), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def checkpoint(registry, tmp_path_factory) -> Path:
    """Train the tiny Sim4Seg for one step on one phantom case, once per session."""
    out = tmp_path_factory.mktemp("predict-train")
    workspace = Workspace.load(registry)
    train_only(RunSettings(method="tiny-sim4seg", out=out, max_samples=1), workspace)
    return out / "checkpoint"


def answer_with_template(patch: pytest.MonkeyPatch) -> None:
    """Make every sampled path generate ``ANSWER``, so that masks and similarity maps exist."""
    from mdskit_llava.backbone import LlavaBackbone

    generate = LlavaBackbone.generate

    def generate_template(self, image_features, questions, num_paths=1, **options):
        generated = generate(self, image_features, questions, num_paths=num_paths, **options)
        return GeneratedAnswers(texts=[[ANSWER] * len(paths) for paths in generated.texts],
                                mean_logprobs=generated.mean_logprobs)

    patch.setattr(LlavaBackbone, "generate", generate_template)


def busi_png(dataset_folder) -> Path:
    images = sorted(path for path in (dataset_folder("busi") / "benign").glob("*.png") if "_mask" not in path.name)
    if not images:
        pytest.skip("no BUSI benign image found")
    return images[0]


def invoke(registry, *arguments):
    return CliRunner().invoke(main, ["--registry", str(registry), *map(str, arguments)])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


class ReportParser(HTMLParser):
    """Collect the image sources and the text of an HTML document."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def batch(registry, checkpoint, dataset_folder, tmp_path_factory):
    """One self-consistency call on a DICOM, a NIfTI slice and a BUSI PNG, with template answers."""
    inputs = {"dicom": dicom_file("CT_small.dcm"), "nifti": nifti_file("anatomical.nii"),
              "png": busi_png(dataset_folder)}
    out = tmp_path_factory.mktemp("predict-out")
    with pytest.MonkeyPatch.context() as patch:
        answer_with_template(patch)
        result = invoke(registry, "predict", "tiny-sim4seg", *inputs.values(), "--slice", 12, "--question", QUESTION,
                        "--checkpoint", checkpoint, "--ttss", "self-consistency", "--out", out)
    assert result.exit_code == 0, result.output
    records = json.loads((out / "predictions.json").read_text())["predictions"]
    return inputs, out, result, {Path(record["input"]["path"]).name: record for record in records}


def test_batch_prints_answer_per_image(batch):
    inputs, _, result, _ = batch
    for path in inputs.values():
        assert str(path) in result.output
    assert result.output.count("Diagnosis: benign") == 3
    assert "Chain of thought: Modality: breast ultrasound. Findings: one hypoechoic lesion." in result.output


def test_batch_record_contents(batch):
    inputs, _, _, records = batch
    assert set(records) == {path.name for path in inputs.values()}
    for record in records.values():
        assert record["diagnosis"] == "benign"
        assert record["chain_of_thought"] == "Modality: breast ultrasound. Findings: one hypoechoic lesion."
        assert record["question"] == QUESTION
        assert record["ttss"] == "self-consistency"
        assert record["tts_params"]["num_paths"] == 2
        assert len(record["candidates"]) == 2
        assert record["tts_params"]["temperature"] == 1.0
        assert record["similarity_map"]["available"] is True
        assert record["agreement"]["masks"] == 2
        assert record["seconds"] > 0
        assert "intensity" in record["input"]
    assert records["CT_small.dcm"]["input"]["intensity"]["units"] == "HU"
    assert records["anatomical.nii"]["input"]["slice"] == 12


def test_batch_images_match_inputs(batch):
    inputs, _, _, records = batch
    for name, record in records.items():
        height, width = record["input"]["size"]
        outputs = record["outputs"]
        for key in ("image", "mask", "overlay", "similarity", "agreement"):
            assert Image.open(outputs[key]).size == (width, height), (name, key)
        mask = np.asarray(Image.open(outputs["mask"])) > 0
        assert int(mask.sum()) == record["mask_area_pixels"]
    assert "native_mask" not in records[inputs["png"].name]["outputs"]


def test_dicom_seg_lines_up_with_input(batch):
    inputs, _, _, records = batch
    outputs = records["CT_small.dcm"]["outputs"]
    segmentation = pydicom.dcmread(outputs["native_mask"])
    original = pydicom.dcmread(inputs["dicom"])
    assert (segmentation.Rows, segmentation.Columns) == (original.Rows, original.Columns)
    referenced = segmentation.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == original.SOPInstanceUID
    mask = np.asarray(Image.open(outputs["mask"])) > 0
    assert np.array_equal(segmentation.pixel_array.astype(bool), mask)


def test_nifti_label_map_lines_up_with_input(batch):
    inputs, _, _, records = batch
    record = records["anatomical.nii"]
    label_map = nib.load(record["outputs"]["native_mask"])
    volume = nib.load(inputs["nifti"])
    assert label_map.shape == volume.shape
    assert np.allclose(label_map.affine, volume.affine)
    labels = np.asarray(label_map.dataobj)
    assert int(labels[:, :, 12].sum()) == record["mask_area_pixels"]
    assert int(labels.sum()) == record["mask_area_pixels"]


def test_report_embeds_images_and_texts(batch):
    _, out, _, records = batch
    parser = ReportParser()
    parser.feed((out / "report.html").read_text(encoding="utf-8"))
    text = " ".join(parser.text)
    # Input, overlay, similarity and agreement for each of the three cases.
    assert len(parser.images) == 12
    assert all(source.startswith("data:image/png;base64,") for source in parser.images)
    assert all(len(source) > 100 for source in parser.images)
    assert "http" not in (out / "report.html").read_text(encoding="utf-8")
    for name in records:
        assert name in text
    assert text.count("Modality: breast ultrasound. Findings: one hypoechoic lesion.") == 3
    assert QUESTION in text


def test_json_output_without_out(registry, checkpoint):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--checkpoint", checkpoint, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.output)
    assert len(records) == 1
    assert records[0]["input"]["format"] == "dicom"
    assert records[0]["input"]["intensity"]["window_source"].startswith("file")
    assert records[0]["method"] == "tiny-sim4seg"
    assert "outputs" not in records[0]


def test_record_without_similarity_map():
    source = read_input_image(dicom_file("MR_small.dcm"))
    height, width = source.image.shape[:2]
    sample = MdsSample(case_id="MR_small", dataset="predict", modality="MR", image=source.image,
                       mask=np.zeros((height, width), dtype=bool), label="", label_set=("benign",),
                       question=QUESTION)
    answer = "Findings: none. Diagnosis: benign."
    selection = Selection(text=answer, diagnosis="benign", mask=torch.zeros(height, width, dtype=torch.bool))
    prediction = Prediction(sample, selection, candidates=[], similarity=None)
    description = {"method": "lisa", "prompt_module": None}
    without_module = build_record(source, prediction, 1.0, description)
    assert without_module["similarity_map"] == {
        "available": False, "reason": "the method has no prompt module, so no similarity map is computed"}
    assert without_module["diagnosis"] == "benign"
    assert without_module["agreement"] is None
    without_seg = build_record(source, prediction, 1.0, {**description, "prompt_module": "rvls2m"})
    assert without_seg["similarity_map"]["reason"] == "no path generated [SEG], so the prompt module did not run"


def test_split_answer():
    assert split_answer(ANSWER) == ("Modality: breast ultrasound. Findings: one hypoechoic lesion.", "benign")
    assert split_answer("Findings: none [SEG]") == ("Findings: none", None)


# Bad input ----------------------------------------------------------------------------------------

def test_empty_question(registry, tmp_path):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", "  ")
    assert_user_error(result, "the question is empty", "--question")


def test_method_without_checkpoint(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION)
    assert_user_error(result, "method 'tiny-sim4seg' has no trained checkpoint",
                      "mdskit train tiny-sim4seg", "--checkpoint")


def test_checkpoint_folder_not_found(registry, tmp_path):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--checkpoint", tmp_path / "absent")
    assert_user_error(result, f"checkpoint folder {tmp_path / 'absent'} not found", "mdskit train")


def test_missing_image(registry, tmp_path):
    result = invoke(registry, "predict", "tiny-sim4seg", tmp_path / "absent.dcm", "--question", QUESTION)
    assert_user_error(result, f"input image {tmp_path / 'absent.dcm'} not found")


def test_volume_without_slice(registry):
    path = nifti_file("anatomical.nii")
    result = invoke(registry, "predict", "tiny-sim4seg", path, "--question", QUESTION)
    assert_user_error(result, str(path), "is a 3-D volume", "--slice INDEX")


def test_dicom_without_pixel_data(registry):
    path = dicom_file("rtplan.dcm")
    result = invoke(registry, "predict", "tiny-sim4seg", path, "--question", QUESTION)
    assert_user_error(result, str(path), "contains no pixel data")


def test_undecodable_dicom(registry):
    path = dicom_file("JPEG-lossy.dcm")
    try:
        pydicom.dcmread(path).pixel_array
    except (RuntimeError, NotImplementedError):
        pass
    else:
        pytest.skip("a decoder for 12-bit JPEG Extended is installed, so the file decodes here")
    result = invoke(registry, "predict", "tiny-sim4seg", path, "--question", QUESTION)
    assert_user_error(result, str(path), "JPEG Extended", "uncompressed transfer syntax")


def test_corrupt_image(registry, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    result = invoke(registry, "predict", "tiny-sim4seg", broken, "--question", QUESTION)
    assert_user_error(result, f"{broken} could not be decoded", "corrupt or truncated", "re-export")
    assert "public release" not in result.output


def test_truncated_png(registry, tmp_path):
    whole = tmp_path / "whole.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:-40])
    result = invoke(registry, "predict", "tiny-sim4seg", truncated, "--question", QUESTION)
    assert_user_error(result, f"{truncated} could not be decoded", "corrupt or truncated")


def test_image_is_a_folder(registry, tmp_path):
    result = invoke(registry, "predict", "tiny-sim4seg", tmp_path, "--question", QUESTION)
    assert_user_error(result, f"input image {tmp_path} is a folder")
    assert "not found" not in result.output


def test_checkpoint_is_a_file(registry, tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(image)
    result = invoke(registry, "predict", "tiny-sim4seg", image, "--question", QUESTION, "--checkpoint", image)
    assert_user_error(result, f"--checkpoint {image} is a file, not a folder")


def test_invalid_window(registry):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--window", "40")
    assert result.exit_code == 2
    assert "CENTRE,WIDTH" in result.output


@pytest.mark.parametrize("window", ["nan,400", "40,inf", "-inf,400"])
def test_non_finite_window(registry, window):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--window", window)
    assert result.exit_code == 2
    assert "non-finite" in result.output
    assert window in result.output


def test_batch_candidate_selection_fields(batch):
    _, _, _, records = batch
    for record in records.values():
        for candidate in record["candidates"]:
            for key in ("score", "chosen", "perturbation", "question_index", "agreement", "sampled_path", "bbox"):
                assert key in candidate, key
        chosen = [candidate["path"] for candidate in record["candidates"] if candidate["chosen"]]
        assert chosen == sorted(record["chosen"])


def test_strategy_options_reach_records(registry, checkpoint):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--checkpoint", checkpoint, "--ttss", "best-of-n", "--paths", 2, "--temperature", 1.0,
                    "--perturbations", 2, "--questions", 2, "--score", "logprob", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert record["tts_params"]["num_perturbations"] == 2
    assert record["tts_params"]["num_questions"] == 2
    assert record["tts_params"]["score"] == "logprob"
    assert len(record["candidates"]) == 8
    assert {candidate["perturbation"] for candidate in record["candidates"]} == {0, 1}
    assert {candidate["question_index"] for candidate in record["candidates"]} == {0, 1}
    assert all(candidate["score"] is not None for candidate in record["candidates"])


def test_invalid_strategy_option(registry, checkpoint):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--checkpoint", checkpoint, "--ttss", "best-of-n", "--score", "dice")
    assert result.exit_code == 2
    assert "dice" in result.output


def test_out_is_a_file(registry, tmp_path, monkeypatch):
    import mdskit.predict

    def fail_to_load(*arguments, **options):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(mdskit.predict, "Predictor", fail_to_load)
    target = tmp_path / "afile"
    target.write_text("not a folder", encoding="utf-8")
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--out", target)
    assert_user_error(result, f"--out {target} is a file, not a folder")


def test_interrupt_keeps_cases_and_resumes(registry, checkpoint, tmp_path, monkeypatch):
    from mdskit.predict import Predictor

    predict_source = Predictor.predict_source
    predicted = []

    def interrupt_second(self, source):
        if predicted:
            raise KeyboardInterrupt
        predicted.append(source.path.name)
        return predict_source(self, source)

    out = tmp_path / "out"
    images = [dicom_file("MR_small.dcm"), dicom_file("CT_small.dcm")]
    arguments = ["predict", "tiny-sim4seg", *images, "--question", QUESTION, "--checkpoint", checkpoint,
                 "--out", out]
    monkeypatch.setattr(Predictor, "predict_source", interrupt_second)
    interrupted = invoke(registry, *arguments)
    assert interrupted.exit_code == 130, interrupted.output
    assert f"kept in {out}" in " ".join(interrupted.output.split())
    assert (out / "MR_small" / "prediction.json").is_file()
    summary = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert [record["input"]["path"] for record in summary["predictions"]] == [str(images[0])]
    assert (out / "report.html").is_file()

    def record_calls(self, source):
        predicted.append(source.path.name)
        return predict_source(self, source)

    predicted.clear()
    monkeypatch.setattr(Predictor, "predict_source", record_calls)
    resumed = invoke(registry, *arguments)
    assert resumed.exit_code == 0, resumed.output
    assert predicted == ["CT_small.dcm"]
    summary = json.loads((out / "predictions.json").read_text(encoding="utf-8"))
    assert len(summary["predictions"]) == 2

    predicted.clear()
    changed = invoke(registry, *arguments, "--seed", 1)
    assert changed.exit_code == 0, changed.output
    assert predicted == ["MR_small.dcm", "CT_small.dcm"]


def test_max_fused_paths_decodes_only_the_fused_masks(registry, checkpoint):
    with pytest.MonkeyPatch.context() as patch:
        answer_with_template(patch)
        result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                        "--checkpoint", checkpoint, "--ttss", "self-consistency", "--paths", 3,
                        "--max-fused-paths", 1, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert record["tts_params"]["max_fused_paths"] == 1
    candidates = record["candidates"]
    decoded = [candidate for candidate in candidates if candidate["decoded"]]
    assert len(candidates) == 3
    assert len(decoded) == 1
    assert decoded[0]["mean_logprob"] == max(candidate["mean_logprob"] for candidate in candidates)
    assert decoded[0]["mask_area"] == record["mask_area_pixels"]
    assert all(candidate["mask_area"] is None for candidate in candidates if not candidate["decoded"])


@pytest.mark.parametrize(("ttss", "value", "message"), [
    ("self-consistency", -1, "max_fused_paths (--max-fused-paths) must be an integer of 0 (every voting path) or "
                             "more, got -1."),
    ("best-of-n", 2, "max_fused_paths"),
])
def test_invalid_max_fused_paths(registry, checkpoint, ttss, value, message):
    result = invoke(registry, "predict", "tiny-sim4seg", dicom_file("MR_small.dcm"), "--question", QUESTION,
                    "--checkpoint", checkpoint, "--ttss", ttss, "--max-fused-paths", value)
    assert result.exit_code == 2
    assert message in result.output
