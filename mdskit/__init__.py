"""mdskit: a plugin framework for medical diagnosis segmentation (MDS).

A method reads a medical image and a clinical question and returns, together,
a segmentation mask of the finding and a diagnosis with a short chain of
thought. Methods are combinations of registered components (see
``registry.yaml``); components come from plugins found through the
``mdskit.plugins`` entry-point group.
"""

__version__ = "0.1.0"

SEG_TOKEN = "[SEG]"
"""The vocabulary token whose last hidden state prompts the mask decoder."""
