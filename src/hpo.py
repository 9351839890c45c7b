"""Hyperparameter search with Optuna (hydra/sweeper=hpo), recorded like every sweep, with pruning.

hydra-optuna-sweeper turns the search space into Optuna's distributions and trials into
Hydra jobs; the ask-and-tell loop is ours (search() below), so that:
1. the search is one MLflow parent run and every trial a child run (jobs find the parent
   through the sweep folder, as in src.sweep), ended FINISHED, FAILED or KILLED;
2. each batch of trials is composed and validated before it trains;
3. a trial's run reaches Optuna as the one number it optimises, the last value of the
   metric `objective` (val_accuracy by default), with its per-epoch values as the trial's
   intermediate values; a skipped trial (same config finished before) counts with its earlier run;
4. with a pruner (hydra/sweeper/pruner=median or halving), each trial reports every epoch to
   Optuna from inside the training loop and stops when the pruner says (src/pruning.py); the
   study then lives in a database the jobs reach (hydra.sweeper.storage, or <sweep dir>/optuna.db);
5. every trial's run is tagged with its trial number and state (COMPLETE or PRUNED); the parent
   gets the best trial (value, parameters, run), the counts, Optuna's parameter importances
   (seeded) as metrics importance/<param>, and optimization_results.yaml.
"""

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from src import tracking
from src.errors import ConfigError
from src.paths import write_json, write_text
from src.pruning import open_storage, trial_file
from src.sweep import ParentRun, hold, job_config, job_error, release_workers

log = logging.getLogger(__name__)
STUDY_DB = "optuna.db"  # <sweep dir>/optuna.db: a pruned search's study when hydra.sweeper.storage is null


@dataclass
class Outcome:
    """What one trial's job came to."""

    job_return: object           # Hydra's JobReturn (raises the job's error when read, if it failed)
    value: float | None = None   # the objective's last value
    run_id: str | None = None
    skipped: bool = False        # the same config finished before: its earlier run
    pruned_at: int = 0           # the epoch the pruner stopped it after

    @property
    def failed(self) -> bool:
        return self.job_return.status == JobStatus.FAILED


class ObjectiveLauncher:
    """A launcher that validates each batch of trials, then says what each trial's job came to."""

    def __init__(self, launcher, hydra_context, config, objective: str, parent: ParentRun):
        self.launcher, self.hydra_context, self.config = launcher, hydra_context, config
        self.objective, self.parent, self.failures, self.launched = objective, parent, [], 0

    def launch(self, job_overrides, initial_job_idx: int) -> list[Outcome]:
        for job in job_overrides:
            job_config(self.hydra_context, self.config, list(job))
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        self.launched += len(returns)
        return [self.outcome(initial_job_idx + index, list(job), job_return)
                for index, (job, job_return) in enumerate(zip(job_overrides, returns, strict=True))]

    def outcome(self, index: int, job: list[str], job_return) -> Outcome:
        if job_return.status == JobStatus.FAILED:
            self.failures.append((index, job, job_error(job_return)))
            return Outcome(job_return)
        result = job_return.return_value
        metrics = self.parent.client.get_run(result["run_id"]).data.metrics  # last values
        if self.objective not in metrics:
            known = ", ".join(sorted(key for key in metrics if "/" not in key))  # not the per-layer ones
            raise ConfigError(f"objective {self.objective!r} is not a metric of the trial's run; use one of: "
                              f"{known} (hydra.sweeper.objective=...)")
        return Outcome(job_return, metrics[self.objective], result["run_id"], result["skipped"],
                       result.get("pruned_at_epoch", 0))


def search(impl, objective: str, arguments: list[str]):
    """Run the search (impl: hydra-optuna-sweeper's OptunaSweeperImpl, set up) under a parent run."""
    pruner = impl.config.hydra.sweeper.get("pruner")  # its config (Hydra built it once already: it can be)
    parser = OverridesParser.create(config_loader=impl.hydra_context.config_loader)
    fixed = [override.input_line for override in parser.parse_overrides(arguments)
             if not override.is_sweep_override()]
    base = job_config(impl.hydra_context, impl.config, fixed)  # the experiment, data and store of every trial
    sweep_dir = Path(impl.config.hydra.sweep.dir)
    lock = hold(sweep_dir)  # noqa: F841 (held until the search returns)
    parent = ParentRun([base], sweep_dir, arguments)
    launcher = ObjectiveLauncher(impl.launcher, impl.hydra_context, impl.config, objective, parent)
    try:
        study = ask_and_tell(impl, arguments, launcher, objective, pruner, sweep_dir, parent)
    except BaseException as error:
        parent.stopped_by(error)
        raise
    release_workers()  # not after an interrupt: the workers are still closing their runs
    for index, job, error in launcher.failures:  # tolerated (hydra.sweeper.max_failure_rate)
        log.warning("trial %d (%s) failed: %s", index, " ".join(job), error)
    conclude(study, launcher, parent, objective, sweep_dir)


def ask_and_tell(impl, arguments: list[str], launcher: ObjectiveLauncher, objective: str, pruner,
                 sweep_dir: Path, parent: ParentRun) -> optuna.Study:
    """hydra-optuna-sweeper's loop, with pruning: ask a batch of trials, launch them, tell Optuna
    each outcome; stop when more of a batch failed than max_failure_rate allows."""
    distributions, fixed = search_space(impl, arguments)
    directions = impl._get_directions()
    if len(directions) != 1:
        raise ConfigError(f"hydra.sweeper.direction: one direction for the one objective {objective!r}, "
                          f"not {directions}")
    storage = storage_url(impl.storage, sweep_dir, pruner)
    study = optuna.create_study(study_name=impl.study_name, storage=open_storage(storage) if storage else None,
                                sampler=impl.sampler, direction=directions[0], load_if_exists=True)
    log.info("study %r (%s), sampler %s, %s, pruner %s", study.study_name, storage or "in memory",
             type(impl.sampler).__name__, directions[0], pruner._target_ if pruner else None)
    to_go = impl.n_trials
    while to_go > 0:
        trials = [study.ask() for _ in range(min(to_go, impl.n_jobs))]
        jobs = impl._configure_trials(trials, distributions, fixed)
        if pruner is not None:
            for index, trial in enumerate(trials):
                write_json(trial_file(sweep_dir, impl.job_idx + index),
                           {"parent_run_id": parent.run_id, "storage": storage, "study_name": study.study_name,
                            "trial_id": trial._trial_id, "number": trial.number, "objective": objective,
                            "pruner": OmegaConf.to_container(pruner, resolve=True)})
        outcomes = launcher.launch(jobs, initial_job_idx=impl.job_idx)
        impl.job_idx += len(outcomes)
        for trial, outcome in zip(trials, outcomes, strict=True):
            tell(study, trial, outcome, objective, parent.client)
        failed = [outcome for outcome in outcomes if outcome.failed]
        if len(failed) / len(outcomes) > impl.max_failure_rate:
            _ = failed[0].job_return.return_value  # raises the first failed job's error
        to_go -= len(trials)
    return study


def search_space(impl, arguments: list[str]) -> tuple[dict, list]:
    """Optuna's distributions of the swept keys, and the fixed overrides (as the plugin reads them)."""
    impl._process_searchspace_config()
    distributions, fixed = create_params_from_overrides([*impl._parse_sweeper_params_config(), *arguments])
    distributions = {**(impl.search_space_distributions or {}), **distributions}
    if isinstance(impl.sampler, functools.partial) and impl.sampler.func == optuna.samplers.GridSampler:
        grid = {name: impl._to_grid_sampler_choices(distribution) for name, distribution in distributions.items()}
        impl.sampler = impl.sampler(grid)
        impl.n_trials = min(impl.n_trials, math.prod(len(values) for values in grid.values()))
        log.info("%d trials: the whole grid", impl.n_trials)
    return {name: dist for name, dist in distributions.items() if name not in fixed}, fixed


def storage_url(storage: str | None, sweep_dir: Path, pruner) -> str | None:
    """Where the study lives: the configured storage; for a pruned search without one, a fresh
    SQLite file in the sweep folder (its jobs, in other processes, report to it)."""
    if storage or pruner is None:
        return storage
    path = (sweep_dir / STUDY_DB).resolve()
    path.unlink(missing_ok=True)  # a new study each search, as in memory
    return f"sqlite:///{path}"


def tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, objective: str, client) -> None:
    """The outcome to Optuna (the run's per-epoch objective first), and the trial to the run's tags."""
    if outcome.failed:
        told(study, trial, None, TrialState.FAIL)
        return
    trial.set_user_attr("run_id", outcome.run_id)
    for point in client.get_metric_history(outcome.run_id, objective):  # what the job reported, seen here too
        trial.report(point.value, point.step)
    state = TrialState.PRUNED if outcome.pruned_at else TrialState.COMPLETE
    told(study, trial, outcome.value if state == TrialState.COMPLETE else None, state)
    if not outcome.skipped:  # a skipped trial's run belongs to the search that trained it
        tracking.set_tag(client, outcome.run_id, f"{tracking.TAG}trial", str(trial.number))
        tracking.set_tag(client, outcome.run_id, f"{tracking.TAG}trial_state", state.name)


def told(study: optuna.Study, trial: optuna.Trial, value: float | None, state: TrialState) -> None:
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as error:  # GridSampler stops the study after the grid's last trial, which works in
        if "Study.stop" not in str(error):  # optimize() only; the trial is told all the same (tell's finally)
            raise


def conclude(study: optuna.Study, launcher: ObjectiveLauncher, parent: ParentRun, objective: str,
             sweep_dir: Path) -> None:
    """The parent's record of the search: best trial, counts, importances; then FINISHED."""
    states = [trial.state for trial in study.trials]
    complete = [trial for trial in study.trials if trial.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    importances = param_importances(study) if len(complete) >= 2 else {}
    results = {"name": "optuna", "best_params": best.params if best else {}, "best_value": best.value if best else None,
               "best_trial": best.number if best else None, "best_run": best.user_attrs.get("run_id") if best else None,
               "param_importances": importances,
               "trials": {state.name: states.count(state) for state in TrialState if states.count(state)}}
    path = write_text(sweep_dir / "optimization_results.yaml", yaml.safe_dump(results, sort_keys=False))
    tags = {"ch11.objective": objective, "ch11.trials": str(launcher.launched),
            "ch11.failed_trials": str(len(launcher.failures)),
            "ch11.pruned_trials": str(states.count(TrialState.PRUNED)),
            "ch11.best_value": str(results["best_value"]), "ch11.best_trial": str(results["best_trial"]),
            "ch11.best_run": str(results["best_run"]),
            "ch11.best_params": " ".join(f"{key}={value}" for key, value in results["best_params"].items())}
    if importances:
        tracking.MetricSink(parent.client, parent.run_id)(0, {f"importance/{key}": value
                                                               for key, value in importances.items()})
    parent.end("FINISHED", tags=tags, artifact=path)
    log.info("best %s %s with %s (trial %s); %s of %d trials pruned", objective, tags["ch11.best_value"],
             tags["ch11.best_params"], tags["ch11.best_trial"], tags["ch11.pruned_trials"], len(states))


def param_importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's importance of each parameter over the finished trials: mean decrease in impurity of a
    seeded random forest (the same every time); {} when the trials cannot tell them apart.
    Optuna's default, fANOVA, fails in Optuna 2.10 under NumPy 2 (an array assigned to one cell)."""
    from optuna.importance import MeanDecreaseImpurityImportanceEvaluator, get_param_importances  # noqa: PLC0415

    try:
        return {key: float(value) for key, value in
                get_param_importances(study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0)).items()}
    except (RuntimeError, ValueError) as error:
        log.warning("no parameter importances: %s", error)
        return {}
