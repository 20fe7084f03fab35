"""The mdskit contract checks for the smoothed-similarity prompt module."""

from mdskit_example_prompt.prompt import SmoothedSimilarityPrompt

from mdskit.testing import PromptModuleContract


class TestSmoothedSimilarityPrompt(PromptModuleContract):
    def make_component(self):
        return SmoothedSimilarityPrompt(sigma=1.0, threshold=0.5)
