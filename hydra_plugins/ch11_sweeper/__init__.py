"""Hydra finds plugins only in the `hydra_plugins` namespace package: this registers ours.

The sweeper lives in src/sweep.py (conf/hydra/sweeper/validating.yaml selects it), the parallel
launcher in src/launcher.py (conf/hydra/launcher/parallel.yaml).
"""

from src import launcher, sweep


class ValidatingSweeper(sweep.ValidatingSweeper):
    """Basic sweeper + validation of every job first + the MLflow parent run (see src.sweep)."""


class GroupingLauncher(launcher.GroupingLauncher):
    """joblib's launcher, with jobs of one graph sent to one worker (see src.launcher)."""
