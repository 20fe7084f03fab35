"""An example mdskit plugin: a smoothed-similarity prompt module."""

__version__ = "0.1.0"
