"""hydra/sweeper=hpo: hydra-optuna-sweeper under one MLflow parent run (the work is in src/hpo.py).

A package of its own: the experiment stages depend on hydra_plugins/ch11_sweeper only.
"""

from hydra.plugins.sweeper import Sweeper


class OptunaSweeper(Sweeper):
    """Optuna's search, each trial a child run, optimising one job metric (`objective`), pruned by
    `pruner` (an optuna.pruners config, or None) from inside the training loop."""

    def __init__(self, objective: str, pruner=None, **optuna_settings):  # pruner: built; src.hpo reads its config
        # Hydra imports every plugin module at each start: Optuna loads only when this sweeper is chosen.
        from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper as Optuna  # noqa: PLC0415

        self.optuna, self.objective = Optuna(**optuna_settings), objective

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.optuna.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]):
        from src import hpo  # noqa: PLC0415 (as above: MLflow only when this sweeper runs)

        return hpo.search(self.optuna.sweeper, self.objective, arguments)
