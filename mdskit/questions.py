"""Clinical questions asked about an image, several phrasings per modality.

Every question asks for a segmentation of the finding and for the
diagnosis, and names the possible diagnoses (``{choices}``) so that the
answer can be one of them. The phrasing for a case is chosen by a hash of
its uid and a seed, so it does not depend on the order in which cases are
loaded and varies across the cases of a dataset.
"""

from __future__ import annotations

import hashlib

from .sample import MdsSample

# Keyed by a word that the lower-cased modality contains; checked in order.
# NOTE: the ultrasound phrasings name the breast, because BUSI and the
# phantom are the only ultrasound datasets so far. A dataset of another
# organ needs its own modality string and phrasings.
QUESTIONS_BY_MODALITY: dict[str, tuple[str, ...]] = {
    "ultrasound": (
        "Segment the breast lesion in this ultrasound image, if there is one, and give the diagnosis: {choices}.",
        "Is there a breast lesion in this ultrasound scan? Segment it and tell me whether the case is {choices}.",
        "Please outline any lesion in this breast ultrasound and classify the case as {choices}.",
        "Find and segment the lesion in this breast ultrasound, then diagnose it as {choices}.",
    ),
    "colonoscopy": (
        "Segment the polyp in this colonoscopy image and give the diagnosis.",
        "Where is the lesion in this colonoscopy frame? Segment it and name the finding: {choices}.",
        "Please outline the abnormal tissue in this colonoscopy image and give the diagnosis.",
    ),
    "dermoscopy": (
        "Segment the skin lesion and tell me which skin disease it is: {choices}.",
        "Outline the pigmented lesion in this dermoscopy image and classify it as {choices}.",
        "Please segment the lesion in this dermoscopic image and give the diagnosis: {choices}.",
        "Which skin condition does this dermoscopy image show? Segment the lesion and choose from {choices}.",
    ),
    "chest x-ray": (
        "Segment the lungs in this chest X-ray and classify the image as {choices}.",
        "Please outline both lung fields on this chest radiograph and give the diagnosis: {choices}.",
        "Segment the lung fields and tell me whether this chest X-ray is {choices}.",
    ),
}

GENERIC_QUESTIONS: tuple[str, ...] = (
    "Segment the finding in this {modality} image and give the diagnosis: {choices}.",
    "Please outline the region of interest in this {modality} image and classify the case as {choices}.",
)


def format_choices(labels: tuple[str, ...]) -> str:
    """Join labels as English: "a", "a or b", "a, b or c"."""
    if not labels:
        return ""
    if len(labels) == 1:
        return labels[0]
    return f"{', '.join(labels[:-1])} or {labels[-1]}"


# DICOM Modality codes (PS3.3, C.7.3.1.1.1) whose phrasings are known. Codes
# such as CR or DX name the device, not the body part, so they are left out.
DICOM_MODALITY_CODES: dict[str, str] = {"us": "ultrasound"}


def question_templates(modality: str) -> tuple[str, ...]:
    """Return the phrasings for a modality or DICOM Modality code, or the generic ones when no key matches."""
    lowered = modality.lower()
    lowered = DICOM_MODALITY_CODES.get(lowered.strip(), lowered)
    for key, templates in QUESTIONS_BY_MODALITY.items():
        if key in lowered:
            return templates
    return GENERIC_QUESTIONS


def question_for(sample: MdsSample, seed: int = 0) -> str:
    """Choose and fill the question for ``sample``; the same uid and seed give the same question."""
    templates = question_templates(sample.modality)
    digest = hashlib.sha256(f"{seed}:{sample.uid}".encode("utf-8")).digest()
    template = templates[int.from_bytes(digest[:8], "big") % len(templates)]
    return template.format(choices=format_choices(tuple(sample.label_set)), modality=sample.modality)
