"""Registers the similarity prompt modules (RVLS2M, box, points) with mdskit."""

from mdskit.plugins import hookimpl

from .rvls2m import RVLS2M
from .similarity_prompts import SimilarityBox, SimilarityPoints


@hookimpl
def mdskit_prompt_modules():
    return [RVLS2M, SimilarityBox, SimilarityPoints]
