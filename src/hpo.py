"""Hyperparameter search with Optuna (hydra/sweeper=hpo), recorded like every sweep.

hydra-optuna-sweeper asks Optuna for trials and launches them as Hydra jobs with any
launcher; this wraps it so that:
1. the search is one MLflow parent run and every trial a child run (jobs find the parent
   through the sweep folder, as in src.sweep), ended FINISHED, FAILED or KILLED;
2. each batch of trials is composed and validated before it trains;
3. a trial's run reaches Optuna as the one number it optimises, the last value of the
   metric `objective` (val_accuracy by default); a skipped trial (same config finished
   before) counts with its earlier run;
4. the best trial is tagged on the parent run, Optuna's optimization_results.yaml logged.
"""

import logging
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus

from src.errors import ConfigError
from src.sweep import ParentRun, hold, job_config, job_error, release_workers

log = logging.getLogger(__name__)


class ObjectiveLauncher:
    """A launcher that validates each batch of trials, then hands Optuna the objective only."""

    def __init__(self, launcher, hydra_context, config, objective: str, parent: ParentRun):
        self.launcher, self.hydra_context, self.config = launcher, hydra_context, config
        self.objective, self.parent, self.failures, self.launched = objective, parent, [], 0

    def launch(self, job_overrides, initial_job_idx: int):
        for job in job_overrides:
            job_config(self.hydra_context, self.config, list(job))
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        for index, (job, job_return) in enumerate(zip(job_overrides, returns, strict=True)):
            if job_return.status == JobStatus.FAILED:
                self.failures.append((initial_job_idx + index, list(job), job_error(job_return)))
                continue
            metrics = self.parent.client.get_run(job_return.return_value["run_id"]).data.metrics  # last values
            if self.objective not in metrics:
                known = ", ".join(sorted(key for key in metrics if "/" not in key))  # not the per-layer ones
                raise ConfigError(f"objective {self.objective!r} is not a metric of the trial's run; use one of: "
                                  f"{known} (hydra.sweeper.objective=...)")
            job_return.return_value = metrics[self.objective]
        self.launched += len(returns)
        return returns


def search(impl, objective: str, arguments: list[str]):
    """Run hydra-optuna-sweeper's search (impl: its OptunaSweeperImpl, set up) under a parent run."""
    parser = OverridesParser.create(config_loader=impl.hydra_context.config_loader)
    fixed = [override.input_line for override in parser.parse_overrides(arguments)
             if not override.is_sweep_override()]
    base = job_config(impl.hydra_context, impl.config, fixed)  # the experiment, data and store of every trial
    sweep_dir = Path(impl.config.hydra.sweep.dir)
    lock = hold(sweep_dir)  # noqa: F841 (held until the search returns)
    parent = ParentRun([base], sweep_dir, arguments)
    launcher = impl.launcher = ObjectiveLauncher(impl.launcher, impl.hydra_context, impl.config, objective, parent)
    try:
        impl.sweep(arguments)
    except BaseException as error:
        parent.stopped_by(error)
        raise
    release_workers()  # not after an interrupt: the workers are still closing their runs
    for index, job, error in launcher.failures:  # tolerated by Optuna (hydra.sweeper.max_failure_rate)
        log.warning("trial %d (%s) failed: %s", index, " ".join(job), error)
    results = sweep_dir / "optimization_results.yaml"
    best = yaml.safe_load(results.read_text()) if results.is_file() else {}
    tags = {"ch11.objective": objective, "ch11.trials": str(launcher.launched),
            "ch11.failed_trials": str(len(launcher.failures)), "ch11.best_value": str(best.get("best_value")),
            "ch11.best_params": " ".join(f"{key}={value}" for key, value in best.get("best_params", {}).items())}
    parent.end("FINISHED", tags=tags, artifact=results if results.is_file() else None)
    log.info("best %s %s with %s", objective, tags["ch11.best_value"], tags["ch11.best_params"])
