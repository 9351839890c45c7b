"""Hydra finds plugins only in the `hydra_plugins` namespace package: this registers ours.

The sweeper itself lives in src/sweep.py; conf/hydra/sweeper/validating.yaml selects it.
"""

from src import sweep


class ValidatingSweeper(sweep.ValidatingSweeper):
    """Basic sweeper + validation of every job first + the MLflow parent run (see src.sweep)."""
