"""Registers the LiteMedSAM mask decoder with mdskit."""

from mdskit.plugins import hookimpl

from .litemedsam import LiteMedSAM


@hookimpl
def mdskit_mask_decoders():
    return [LiteMedSAM]
