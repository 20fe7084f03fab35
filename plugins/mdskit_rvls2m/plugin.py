"""Registers the RVLS2M prompt module with mdskit."""

from mdskit.plugins import hookimpl

from .rvls2m import RVLS2M


@hookimpl
def mdskit_prompt_modules():
    return [RVLS2M]
