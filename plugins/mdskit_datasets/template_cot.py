"""The ``template`` chain-of-thought generator: short, rule-written target answers.

Every answer has four sentences in a fixed order::

    Modality: <modality>. Findings: <facts>. Diagnosis: <label>. Mask: [SEG].

The findings are measured on the ground-truth mask by
:func:`mdskit.findings.measure_mask` (region count, position in image
coordinates, area as a share of the image, border class) plus the shape
terms that matter for the modality:

- breast ultrasound (the busi and phantom datasets): the lesion's orientation
  (wider or taller than wide); a normal case, whose mask is empty, reads
  "no focal lesion".
- colonoscopy (Kvasir-SEG): the polyp's position, size and border.
- dermoscopy (PH2): the lesion's position, size and border, and from the
  PH2 table, when the sample carries it, the asymmetry grade and the number
  of colours.
- chest X-ray (Shenzhen): the mask is both lungs, not a lesion, so the
  findings give the lung fields' share of the image and state clear lung
  fields for normal cases and abnormal opacities for tuberculosis. The
  opacity statement follows from the label, not from a measurement.

Other datasets get the wording of their modality when it is chest X-ray,
colonoscopy or dermoscopy, else a generic sentence about the segmented
region. The
output depends only on the sample (no randomness) and stays under about 45
words, short enough for a small language model to learn.
"""

from __future__ import annotations

from mdskit import SEG_TOKEN
from mdskit.cot import DIAGNOSIS_MARKER, CotGenerator
from mdskit.findings import MaskFindings, measure_mask
from mdskit.sample import MdsSample

_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_ASYMMETRY_WORDS = {0: "symmetric", 1: "asymmetric in one axis", 2: "asymmetric in both axes"}
_PH2_COLOURS = ("white", "red", "light_brown", "dark_brown", "blue_gray", "black")


def count_words(count: int, noun: str, plural: str | None = None) -> str:
    """Write a count and a noun in words: "one polyp", "three regions", "12 regions"."""
    number = _NUMBER_WORDS[count] if count < len(_NUMBER_WORDS) else str(count)
    word = noun if count == 1 else (plural or f"{noun}s")
    return f"{number} {word}"


def _area_phrase(findings: MaskFindings) -> str:
    """E.g. "about 8% of the image", or "under 1% of the image"."""
    if findings.area_percent_text.startswith("under"):
        return f"{findings.area_percent_text} of the image"
    return f"about {findings.area_percent_text} of the image"


def _border_phrase(findings: MaskFindings) -> str:
    """E.g. "with a smooth border", "with an irregular border"."""
    article = "an" if findings.border and findings.border[0] in "aeiou" else "a"
    return f"with {article} {findings.border} border"


def _region_phrase(findings: MaskFindings, noun: str) -> str:
    """E.g. "one hypoechoic lesion in the upper left region, about 8% of the image"."""
    return f"{count_words(findings.region_count, noun)} in the {findings.location} region, {_area_phrase(findings)}"


def _breast_ultrasound_findings(findings: MaskFindings) -> str:
    if findings.is_empty:
        return "normal breast tissue layers, no focal lesion"
    return f"{_region_phrase(findings, 'hypoechoic lesion')}, {findings.orientation}, {_border_phrase(findings)}"


def _colonoscopy_findings(findings: MaskFindings) -> str:
    if findings.is_empty:
        return "no polyp visible"
    return f"{_region_phrase(findings, 'polyp')}, {_border_phrase(findings)}"


def _dermoscopy_findings(findings: MaskFindings, sample: MdsSample) -> str:
    if findings.is_empty:
        return "no skin lesion visible"
    text = f"{_region_phrase(findings, 'pigmented lesion')}, {_border_phrase(findings)}"
    criteria = sample.meta.get("criteria") or {}
    asymmetry = _ASYMMETRY_WORDS.get(criteria.get("asymmetry"))
    if asymmetry:
        text += f", {asymmetry}"
    colours = sum(1 for colour in _PH2_COLOURS if criteria.get(colour))
    if colours:
        text += f", {count_words(colours, 'colour')}"
    return text


def _chest_xray_findings(findings: MaskFindings, label: str) -> str:
    if findings.is_empty:
        lungs = "no lung field segmented"
    elif findings.region_count == 2:
        lungs = f"both lung fields segmented, together {_area_phrase(findings)}"
    else:
        lungs = f"lung fields segmented as {count_words(findings.region_count, 'region')}, {_area_phrase(findings)}"
    state = "clear lungs" if label == "normal" else f"abnormal opacities suggesting {label}"
    return f"{lungs}, {state}"


def _generic_findings(findings: MaskFindings) -> str:
    if findings.is_empty:
        return "no focal finding"
    return f"{_region_phrase(findings, 'region')}, {_border_phrase(findings)}"


def _modality_and_findings(sample: MdsSample, findings: MaskFindings) -> tuple[str, str]:
    """Choose the wording by dataset, then by modality for datasets without their own wording."""
    modality = sample.modality.lower()
    if sample.dataset == "phantom":
        return "breast ultrasound phantom", _breast_ultrasound_findings(findings)
    if sample.dataset == "busi":
        return "breast ultrasound", _breast_ultrasound_findings(findings)
    if sample.dataset == "shenzhen" or ("chest" in modality and "x-ray" in modality):
        return sample.modality, _chest_xray_findings(findings, sample.label)
    if sample.dataset == "kvasir" or "colonoscopy" in modality:
        return sample.modality, _colonoscopy_findings(findings)
    if sample.dataset == "ph2" or "dermoscopy" in modality:
        return sample.modality, _dermoscopy_findings(findings, sample)
    return sample.modality, _generic_findings(findings)


class TemplateCot(CotGenerator):
    """Rule-based CoT: modality, measured mask findings, the diagnosis and ``[SEG]``."""

    name = "template"

    def generate(self, sample: MdsSample) -> str:
        """Write the target answer for ``sample`` from its label and its mask."""
        modality_text, findings_text = _modality_and_findings(sample, measure_mask(sample.mask))
        return (f"Modality: {modality_text}. Findings: {findings_text}. "
                f"{DIAGNOSIS_MARKER} {sample.label}. Mask: {SEG_TOKEN}.")
