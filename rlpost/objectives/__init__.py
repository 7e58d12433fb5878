"""rlpost.objectives: one module per objective, each registering itself in `registry.OBJECTIVES`.

The config schema is built from the registered objectives (`rlpost.config.objective`), which imports
every objective module. Loading the config first means an objective module is never half-imported
(its class not yet registered) while the schema is built, whichever module a program imports first.
"""

import rlpost.config  # noqa: F401
