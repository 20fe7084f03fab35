"""First-party mdskit plugin: rvls2m."""

from .rvls2m import RVLS2M

__all__ = ["RVLS2M"]
