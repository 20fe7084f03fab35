"""Registers the SAM-family mask decoders with mdskit: LiteMedSAM, and SAM or MedSAM from weights."""

from mdskit.plugins import hookimpl

from .litemedsam import LiteMedSAM
from .sam import SamDecoder


@hookimpl
def mdskit_mask_decoders():
    return [LiteMedSAM, SamDecoder]
