"""Hook implementations of the first-party datasets plugin.

Registers the four public dataset adapters, the embedded phantom dataset
and the ``template`` chain-of-thought generator.
"""

from __future__ import annotations

from mdskit.plugins import hookimpl

from .busi import BusiAdapter
from .kvasir import KvasirAdapter
from .phantom import PhantomAdapter
from .ph2 import Ph2Adapter
from .shenzhen import ShenzhenAdapter
from .template_cot import TemplateCot


@hookimpl
def mdskit_dataset_adapters() -> list[type]:
    """Return the dataset adapter classes."""
    return [BusiAdapter, KvasirAdapter, Ph2Adapter, ShenzhenAdapter, PhantomAdapter]


@hookimpl
def mdskit_cot_generators() -> list[type]:
    """Return the chain-of-thought generator classes."""
    return [TemplateCot]
