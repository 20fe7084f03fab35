"""Questions, mask findings, the template chain of thought and diagnosis parsing."""

from __future__ import annotations

import numpy as np
import pytest

from mdskit import SEG_TOKEN
from mdskit.cot import CotGenerator, attach_text, parse_diagnosis
from mdskit.errors import PluginError
from mdskit.findings import measure_mask
from mdskit.questions import GENERIC_QUESTIONS, QUESTIONS_BY_MODALITY, format_choices, question_for
from mdskit.sample import MdsSample
from mdskit_datasets.busi import BusiAdapter
from mdskit_datasets.kvasir import KvasirAdapter
from mdskit_datasets.ph2 import Ph2Adapter
from mdskit_datasets.phantom import PhantomAdapter
from mdskit_datasets.shenzhen import ShenzhenAdapter
from mdskit_datasets.template_cot import TemplateCot

PH2_LABELS = ("common nevus", "atypical nevus", "melanoma")
BUSI_LABELS = ("benign", "malignant", "normal")
MAX_ANSWER_WORDS = 45


def _sample(mask: np.ndarray, label: str = "benign", dataset: str = "busi", modality: str = "ultrasound",
            label_set: tuple[str, ...] = BUSI_LABELS, case_id: str = "case-1", meta: dict | None = None) -> MdsSample:
    height, width = mask.shape
    return MdsSample(case_id=case_id, dataset=dataset, modality=modality,
                     image=np.zeros((height, width, 3), dtype=np.uint8), mask=mask.astype(bool),
                     label=label, label_set=label_set, group=case_id, meta=meta or {})


def _disc(shape=(100, 100), centre=(50.0, 50.0), radius=20.0) -> np.ndarray:
    rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
    return np.hypot(rows + 0.5 - centre[0], columns + 0.5 - centre[1]) <= radius


# --- parse_diagnosis ------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("Findings: a lesion. Diagnosis: atypical nevus. Mask: [SEG].", "atypical nevus"),
    ("Diagnosis: common nevus.", "common nevus"),
    ("diagnosis: MELANOMA", "melanoma"),
    ("DIAGNOSIS :  Atypical   Nevus\nMask: [SEG]", "atypical nevus"),
    ("Diagnosis: atypical-nevus.", "atypical nevus"),
    ("The lesion looks like melanoma. Diagnosis: common nevus.", "common nevus"),
    ("Diagnosis: probably melanoma rather than atypical nevus.", "melanoma"),
])
def test_parse_diagnosis_reads_label(text, expected):
    assert parse_diagnosis(text, PH2_LABELS) == expected


@pytest.mark.parametrize("text", [
    "Findings: a pigmented lesion. Mask: [SEG].",  # no marker
    "The diagnosis is melanoma.",  # no colon after the word
    "Diagnosis: basal cell carcinoma. Mask: [SEG].",  # not in the label set
    "Diagnosis: nevus.",  # a fragment of two labels
    "Diagnosis: melanomas.",  # no whole-word match
    "Diagnosis: . Melanoma.",  # the label is outside the diagnosis sentence
    "",
])
def test_parse_diagnosis_rejects_text(text):
    assert parse_diagnosis(text, PH2_LABELS) is None


def test_parse_diagnosis_prefers_longest_label():
    labels = ("nevus", "atypical nevus")
    assert parse_diagnosis("Diagnosis: atypical nevus.", labels) == "atypical nevus"
    assert parse_diagnosis("Diagnosis: nevus.", labels) == "nevus"


def test_parse_diagnosis_spelling_from_label_set():
    assert parse_diagnosis("Diagnosis: tuberculosis", ("Normal", "Tuberculosis")) == "Tuberculosis"


def test_parse_diagnosis_first_marker_wins():
    text = "Diagnosis: benign. Diagnosis: malignant."
    assert parse_diagnosis(text, BUSI_LABELS) == "benign"


# --- questions -------------------------------------------------------------------


def test_format_choices():
    assert format_choices(("polyp",)) == "polyp"
    assert format_choices(("normal", "tuberculosis")) == "normal or tuberculosis"
    assert format_choices(PH2_LABELS) == "common nevus, atypical nevus or melanoma"


@pytest.mark.parametrize(("modality", "key"), [
    ("ultrasound", "ultrasound"), ("ultrasound (synthetic phantom)", "ultrasound"),
    ("colonoscopy", "colonoscopy"), ("dermoscopy", "dermoscopy"), ("chest X-ray", "chest x-ray"),
])
def test_question_for_modality(modality, key):
    sample = _sample(np.zeros((4, 4)), modality=modality)
    question = question_for(sample)
    filled = {template.format(choices=format_choices(BUSI_LABELS), modality=modality)
              for template in QUESTIONS_BY_MODALITY[key]}
    assert question in filled


def test_question_for_generic_fallback():
    sample = _sample(np.zeros((4, 4)), modality="fundus photograph")
    question = question_for(sample)
    assert "fundus photograph" in question
    assert "benign, malignant or normal" in question
    assert any(question.startswith(template.split("{")[0]) for template in GENERIC_QUESTIONS)


def test_question_for_deterministic_and_varied():
    samples = [_sample(np.zeros((4, 4)), case_id=f"c{index}") for index in range(40)]
    first = [question_for(sample, seed=3) for sample in samples]
    assert first == [question_for(sample, seed=3) for sample in samples]
    assert len(set(first)) == len(QUESTIONS_BY_MODALITY["ultrasound"])
    assert first != [question_for(sample, seed=4) for sample in samples]


def test_questions_ask_for_mask_and_diagnosis():
    for templates in (*QUESTIONS_BY_MODALITY.values(), GENERIC_QUESTIONS):
        for template in templates:
            lowered = template.lower()
            assert "segment" in lowered or "outline" in lowered, template
            assert "diagnos" in lowered or "{choices}" in template, template


# --- findings on hand-made masks ----------------------------------------------------


def test_measure_empty_mask():
    findings = measure_mask(np.zeros((30, 40), dtype=bool))
    assert findings.is_empty
    assert findings.region_count == 0
    assert findings.area_fraction == 0.0
    assert findings.location is None
    assert findings.border is None
    assert findings.orientation is None
    assert findings.area_percent_text == "0%"


def test_measure_disc_in_centre():
    findings = measure_mask(_disc())
    assert findings.region_count == 1
    assert findings.location == "central"
    assert findings.border == "smooth"
    assert findings.orientation == "as tall as wide"
    assert findings.area_fraction == pytest.approx(np.pi * 20 ** 2 / 100 ** 2, rel=0.03)
    assert findings.area_percent_text == "13%"


def test_measure_upper_left_square():
    mask = np.zeros((90, 120), dtype=bool)
    mask[5:25, 10:30] = True
    findings = measure_mask(mask)
    assert (findings.vertical, findings.horizontal) == ("upper", "left")
    assert findings.location == "upper left"
    assert findings.border == "smooth"
    assert findings.centroid == pytest.approx((14.5, 19.5))


def test_measure_lower_right_wide_ellipse():
    rows, columns = np.mgrid[0:120, 0:120]
    mask = ((rows - 95) / 8.0) ** 2 + ((columns - 95) / 20.0) ** 2 <= 1
    findings = measure_mask(mask)
    assert findings.location == "lower right"
    assert findings.orientation == "wider than tall"
    # Elongation alone does not make a border irregular.
    assert findings.border == "smooth"


def test_measure_counts_regions():
    mask = _disc(centre=(25, 25), radius=8) | _disc(centre=(75, 75), radius=12)
    mask[0, 99] = True
    findings = measure_mask(mask)
    assert findings.region_count == 3
    # Position uses all pixels; border and box use the largest region.
    assert findings.bbox_height == findings.bbox_width == 24


def test_measure_diagonal_pixels_one_region():
    mask = np.zeros((5, 5), dtype=bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    assert measure_mask(mask).region_count == 1


def test_measure_spiculated_irregular():
    rows, columns = np.mgrid[0:200, 0:200]
    angle = np.arctan2(rows - 100, columns - 100)
    mask = np.hypot(rows - 100, columns - 100) <= 50 * (1 + 0.2 * np.cos(20 * angle))
    findings = measure_mask(mask)
    assert findings.border == "irregular"
    assert findings.convexity < 0.8


def test_measure_lobulated():
    rows, columns = np.mgrid[0:200, 0:200]
    angle = np.arctan2(rows - 100, columns - 100)
    mask = np.hypot(rows - 100, columns - 100) <= 50 * (1 + 0.2 * np.cos(5 * angle))
    assert measure_mask(mask).border == "lobulated"


def test_measure_small_area_text():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:15, 10:15] = True
    assert measure_mask(mask).area_percent_text == "under 1%"


def test_measure_rejects_3d_array():
    with pytest.raises(ValueError, match=r"2-D H x W array, got shape \(4, 4, 3\)"):
        measure_mask(np.zeros((4, 4, 3)))


# --- template chain of thought --------------------------------------------------------


def test_template_breast_lesion_answer():
    mask = np.zeros((100, 100), dtype=bool)
    rows, columns = np.mgrid[0:100, 0:100]
    mask |= ((rows - 20) / 8.0) ** 2 + ((columns - 20) / 14.0) ** 2 <= 1
    answer = TemplateCot().generate(_sample(mask, label="malignant"))
    assert answer == ("Modality: breast ultrasound. Findings: one hypoechoic lesion in the upper left region, "
                      "about 3% of the image, wider than tall, with a smooth border. "
                      "Diagnosis: malignant. Mask: [SEG].")


def test_template_normal_breast_answer():
    answer = TemplateCot().generate(_sample(np.zeros((50, 60)), label="normal"))
    assert answer == ("Modality: breast ultrasound. Findings: normal breast tissue layers, no focal lesion. "
                      "Diagnosis: normal. Mask: [SEG].")


def test_template_chest_xray_describes_lungs():
    mask = _disc(centre=(50, 30), radius=15) | _disc(centre=(50, 70), radius=15)
    sample = _sample(mask, label="tuberculosis", dataset="shenzhen", modality="chest X-ray",
                     label_set=("normal", "tuberculosis"))
    answer = TemplateCot().generate(sample)
    assert "both lung fields segmented" in answer
    assert "abnormal opacities" in answer
    assert "lesion" not in answer
    sample.label = "normal"
    assert "clear lungs" in TemplateCot().generate(sample)


def test_template_dermoscopy_uses_criteria():
    sample = _sample(_disc(), label="melanoma", dataset="ph2", modality="dermoscopy", label_set=PH2_LABELS,
                     meta={"criteria": {"asymmetry": 2, "dark_brown": "X", "black": "X", "blue_gray": "X"}})
    answer = TemplateCot().generate(sample)
    assert "asymmetric in both axes, three colours" in answer


def test_template_irregular_article():
    rows, columns = np.mgrid[0:200, 0:200]
    angle = np.arctan2(rows - 100, columns - 100)
    mask = np.hypot(rows - 100, columns - 100) <= 50 * (1 + 0.2 * np.cos(20 * angle))
    answer = TemplateCot().generate(_sample(mask, dataset="kvasir", modality="colonoscopy", label="polyp",
                                            label_set=("polyp",)))
    assert "with an irregular border" in answer


def test_template_generic_modality():
    answer = TemplateCot().generate(_sample(_disc(), dataset="other", modality="fundus photograph"))
    assert answer.startswith("Modality: fundus photograph. Findings: one region in the central region")


def test_template_deterministic():
    sample = _sample(_disc(), label="benign")
    assert TemplateCot().generate(sample) == TemplateCot().generate(sample)


def _check_answers(samples):
    attach_text(samples, TemplateCot())
    for sample in samples:
        assert sample.question
        assert sample.answer.endswith(f"Mask: {SEG_TOKEN}.")
        assert parse_diagnosis(sample.answer, sample.label_set) == sample.label
        assert len(sample.answer.split()) <= MAX_ANSWER_WORDS, sample.answer


def test_template_answers_phantom():
    _check_answers(PhantomAdapter(case_count=12).load_cases())


@pytest.mark.data
@pytest.mark.parametrize("adapter", [BusiAdapter, KvasirAdapter, Ph2Adapter, ShenzhenAdapter],
                         ids=lambda adapter: adapter.name)
def test_template_answers_real_data(dataset_folder, adapter):
    _check_answers(adapter(dataset_folder(adapter.name)).load_cases())


# --- attach_text --------------------------------------------------------------------


class _FixedAnswer(CotGenerator):
    name = "fixed"

    def __init__(self, answer: str) -> None:
        self.answer = answer

    def generate(self, sample: MdsSample) -> str:
        return self.answer


def test_attach_text_fills_in_place():
    samples = [_sample(_disc(), case_id=f"c{index}") for index in range(3)]
    returned = attach_text(samples, TemplateCot(), seed=5)
    assert returned == samples
    assert [sample.question for sample in samples] == [question_for(sample, 5) for sample in samples]
    assert all(sample.answer == TemplateCot().generate(sample) for sample in samples)


def test_attach_text_requires_seg_token():
    sample = _sample(_disc(), case_id="c9")
    with pytest.raises(PluginError, match=r"generator 'fixed' wrote an answer without \[SEG\] for busi/c9"):
        attach_text([sample], _FixedAnswer("Diagnosis: benign."))


def test_attach_text_requires_matching_diagnosis():
    sample = _sample(_disc(), case_id="c9")
    with pytest.raises(PluginError, match=r"busi/c9 whose diagnosis reads as 'malignant', not the label 'benign'"):
        attach_text([sample], _FixedAnswer("Diagnosis: malignant. Mask: [SEG]."))


def test_dicom_ultrasound_code_gets_ultrasound_questions():
    from mdskit.questions import QUESTIONS_BY_MODALITY, question_templates

    assert question_templates("US") == QUESTIONS_BY_MODALITY["ultrasound"]
    assert question_templates("breast ultrasound") == QUESTIONS_BY_MODALITY["ultrasound"]


def test_unknown_modality_gets_generic_questions():
    from mdskit.questions import GENERIC_QUESTIONS, question_templates

    assert question_templates("CR") == GENERIC_QUESTIONS
    assert question_templates("unknown") == GENERIC_QUESTIONS
