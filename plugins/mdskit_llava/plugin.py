"""Plugin hooks of the LLaVA-style backbone."""

from mdskit.plugins import hookimpl

from .backbone import LlavaBackbone


@hookimpl
def mdskit_backbones() -> list[type]:
    """Register the ``llava`` backbone."""
    return [LlavaBackbone]
