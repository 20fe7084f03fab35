"""First-party mdskit plugin: datasets."""
