"""The plugin's hooks: mdskit calls them once when it loads plugins."""

from mdskit.plugins import hookimpl

from .prompt import SmoothedSimilarityPrompt


@hookimpl
def mdskit_prompt_modules():
    return [SmoothedSimilarityPrompt]
