"""First-party plugin: a LLaVA-style vision-language backbone with ``[SEG]``."""
