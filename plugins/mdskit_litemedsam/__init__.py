"""First-party mdskit plugin: litemedsam."""

from .litemedsam import LiteMedSAM

__all__ = ["LiteMedSAM"]
