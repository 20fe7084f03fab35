"""Plugin hooks of the LLaVA backbones."""

from mdskit.plugins import hookimpl

from .backbone import LlavaBackbone
from .hf_backbone import HfLlavaBackbone


@hookimpl
def mdskit_backbones() -> list[type]:
    """Register the ``llava`` (trained here) and ``llava-hf`` (pretrained folder) backbones."""
    return [LlavaBackbone, HfLlavaBackbone]
