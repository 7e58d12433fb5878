"""rlpost.objectives: one module per objective, each registering itself in `registry.OBJECTIVES`.

The config schema is built from the registered objectives (`rlpost.config.objective`); the
registry imports every objective module on its first lookup. `rlpost.config` exports lazily, so
an objective module importing `rlpost.config.base` never starts the schema half-way through its
own import.
"""
