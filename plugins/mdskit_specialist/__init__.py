"""First-party plugin: the language-free specialist baseline (mmsegmentation + timm)."""
