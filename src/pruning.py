"""Optuna's pruners inside our training loop: a search's trial stops at the epoch its pruner says.

Hydra's Optuna sweeper asks for trials and launches them, but cannot stop one early: it does not
own the training loop. Ours does. With hydra/sweeper=hpo and a pruner (src/hpo.py):
1. the search keeps its study in a database the jobs can reach, and writes for each trial job
   <sweep dir>/optuna_trials/<job number>.json: the study, the trial, the objective, the pruner;
2. the job (src/job.py) reports the objective of every epoch to its trial and asks the pruner;
   told to stop, it ends its run KILLED with the tag ch11.pruned_at_epoch and keeps its resume
   state (asked again, the same config goes on from there), then returns what it reached;
3. the search tells Optuna PRUNED, and tags the run ch11.trial_state=PRUNED.
The file names the search's parent run: a job of another sweep in the same folder ignores it.
"""

import json
from pathlib import Path

from src import interrupts
from src.errors import ConfigError

TRIALS_DIR = "optuna_trials"


class TrialPruned(Exception):
    """The pruner stopped the trial after an epoch; logs are that epoch's."""

    def __init__(self, epoch: int, pruner: str, logs: dict[str, float]):
        super().__init__(f"pruned by Optuna's {pruner} after epoch {epoch}")
        self.epoch, self.logs = epoch, logs

    def result(self) -> dict:
        """The job's result: what it reached, and where it stopped."""
        return {**self.logs, "epochs_run": self.epoch, "pruned_at_epoch": self.epoch, "diverged_at_epoch": 0}


def trial_file(sweep_dir: str | Path, job_num: int) -> Path:
    return Path(sweep_dir) / TRIALS_DIR / f"{job_num}.json"


def trial_of(sweep_dir: str | Path, job_num: int, parent_run_id: str | None) -> dict | None:
    """The trial a sweep's job trains for (None: not a pruned search's job)."""
    path = trial_file(sweep_dir, job_num)
    if parent_run_id is None or not path.is_file():
        return None
    spec = json.loads(path.read_text())
    return spec if spec["parent_run_id"] == parent_run_id else None  # an earlier sweep's file


def open_storage(url: str):
    """Optuna's database storage at url, as the search and its jobs open it.

    Optuna 2.10 (the newest hydra-optuna-sweeper accepts) stamps a new database's schema version
    through a SQLAlchemy 2 connection it never commits: the stamp is lost (a new study fails an
    assertion) and, in SQLite, the open write locks the database against Optuna's own next write.
    Stamped here first, in a committed transaction, Optuna finds the database initialised. SQLite
    waits up to 60 s for a lock, as trials report from several processes. Each storage call returns
    before a Ctrl-C or SIGTERM stops the process, as MLflow's (src/interrupts.py).
    """
    import alembic.migration  # noqa: PLC0415 (only in searches)
    import alembic.script  # noqa: PLC0415
    import optuna  # noqa: PLC0415
    import sqlalchemy  # noqa: PLC0415

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    engine = sqlalchemy.create_engine(url, **kwargs)
    with engine.begin() as connection:
        context = alembic.migration.MigrationContext.configure(connection)
        if context.get_current_revision() is None:
            migrations = Path(optuna.storages.__file__).parent / "_rdb" / "alembic"
            context.stamp(alembic.script.ScriptDirectory(str(migrations)), "head")
    engine.dispose()
    return interrupts.completing(optuna.storages.RDBStorage, "StudyStorage")(url, engine_kwargs=kwargs)


class Reporter:
    """Reports each epoch's objective to the job's trial; raises TrialPruned when its pruner says."""

    def __init__(self, spec: dict):
        import optuna  # noqa: PLC0415 (only in a pruned search's jobs)
        from hydra.utils import instantiate  # noqa: PLC0415

        pruner = instantiate(spec["pruner"])
        study = optuna.load_study(study_name=spec["study_name"], storage=open_storage(spec["storage"]),
                                  pruner=pruner)
        self.trial, self.objective, self.pruner = optuna.trial.Trial(study, spec["trial_id"]), spec["objective"], \
            type(pruner).__name__

    def watch(self, sink):
        """sink, and after an epoch's own logs (those with its duration) the report and the question."""
        def report(step: int, metrics: dict[str, float]) -> None:
            sink(step, metrics)
            if "epoch_time_s" not in metrics:
                return
            if self.objective not in metrics:
                known = ", ".join(sorted(key for key in metrics if not key.startswith(("system/", "epoch_"))))
                raise ConfigError(f"pruning needs an objective measured every epoch, and {self.objective!r} is "
                                  f"not one; use one of: {known} (hydra.sweeper.objective=...)")
            self.trial.report(metrics[self.objective], step)
            if self.trial.should_prune():
                raise TrialPruned(step, self.pruner, metrics)
        return report
