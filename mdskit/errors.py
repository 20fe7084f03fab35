"""Exceptions that the command line turns into one readable message."""


class MdskitError(Exception):
    """An error caused by the user's input or set-up.

    The message names the offending value and says how to fix it; the CLI
    prints it without a traceback.
    """


class ConfigError(MdskitError):
    """An invalid ``registry.yaml`` entry or method parameter."""


class DataError(MdskitError):
    """A missing, unreadable or inconsistent dataset file."""


class CheckpointError(MdskitError):
    """A checkpoint folder that is missing or does not match the method."""


class PluginError(MdskitError):
    """A plugin that failed to load or registered an invalid component."""
