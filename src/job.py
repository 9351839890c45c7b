"""One training job, from a composed config to a finished MLflow run.

train(cfg) validates, then run_job(config) connects to MLflow -> skips if this exact config, code and data
already finished -> resumes or starts the run -> fits and evaluates (the model family's
engine, src/families.py) -> records metrics, model, figures and config -> ends the run.
Every MLflow call goes through src/tracking.py. src/train.py is the command line around it.
"""

import contextlib
import functools
import gc
import importlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf

from src import calibration, figures, tracking
from src.config import flatten, run_identity, source_config, source_role, validate
from src.data.load import require_prepared, reshape_splits
from src.data.shared import prepared_once
from src.errors import one_line
from src.families import FAMILIES, has_source
from src.paths import in_repo
from src.pruning import Reporter, TrialPruned
from src.system_metrics import EpochSampler

if TYPE_CHECKING:  # imported in run_job: it loads Keras
    from src.resume import ResumeState

log = logging.getLogger(__name__)


def train(cfg: DictConfig | dict, workdir: Path | None = None, parent_run_id: str | None = None,
          overrides: list[str] | tuple[str, ...] = (), role: str | None = None,
          tags: dict[str, str] | None = None) -> dict:
    """Validate cfg and run it as one job (run_job)."""
    return run_job(validate(cfg), workdir, parent_run_id, overrides, role, tags)


def run_job(config: dict, workdir: Path | None = None, parent_run_id: str | None = None,
            overrides: list[str] | tuple[str, ...] = (), role: str | None = None,
            tags: dict[str, str] | None = None, trial: dict | None = None) -> dict:
    """Run one job of a validated config; returns its test metrics, run id and whether it was skipped.

    role names a run that another job needs (a transfer source), as a tag and run name; tags are
    added to the run's own (a rerun's ch11.rerun_of); trial is the Optuna trial of a pruned
    search (src/pruning.py): a pruned job returns its last epoch's metrics and pruned_at_epoch.
    """
    require_prepared(in_repo(config["data"]["path"]))  # no dataset: refused before the store is opened (or made)
    client = tracking.connect(config["tracking"])  # fail fast: before loading data, model or training
    experiment_id = tracking.ensure_experiment(client, config["name"], config["tracking"])
    tracking.close_orphans(client, experiment_id)
    prepared = prepared_once(in_repo(config["data"]["path"]))
    identity = run_identity(config, prepared.meta["npz_sha256"], tracking.code_hash(config["model"]["name"]))
    state_root = in_repo(config["state_dir"]) / identity["run_key"]
    finished_before = functools.partial(previous_result, client, experiment_id, identity["run_key"],
                                        config["force"], state_root)
    if done := finished_before():
        return done
    if FAMILIES[config["model"]["name"]].pretrained_base:  # find or fetch the base's weights: fail now, not mid-run
        from src.pretrained.model import weights_file  # noqa: PLC0415 (TensorFlow: only for this family)

        weights_file(config["model"], config["data"]["resize"][0])
    source, source_run = pretrained_source(config, parent_run_id) if has_source(config["transfer"]) else (None, None)
    data = reshape_splits(prepared, config["data"]["train_size"], config["validation_split"],
                          config["data"]["classes"])
    from src.resume import ResumeState  # noqa: PLC0415 (Keras: not for a bad data file or a finished job)

    state = ResumeState(state_root)  # waits for a process training this exact config, then:
    if done := finished_before():  # skip what it finished (or resume below what it left)
        state.release()
        return done
    run_id = tracking.start_run(client, experiment_id, state.run_id, parent_run_id,
                                " ".join(overrides)[:100].rstrip() or role or "default",
                                run_tags(config, identity, overrides, role, source_run) | (tags or {}))
    state.remember_run(run_id)
    result = run_to_the_end(config, data, client, run_id, state, workdir, source, trial)
    pruned = bool(result.get("pruned_at_epoch"))  # stopped before the test set: its validation scores
    shown = ("val_accuracy", "val_loss") if pruned else ("test_accuracy", "test_loss")
    scores = ", ".join(f"{key} {result[key]:.4f}" for key in shown if key in result)
    log.info("run %s %s: %s after %d epochs (MLflow experiment %r at %s)", run_id, "pruned" if pruned else "finished",
             scores, result["epochs_run"], config["name"],
             tracking.shown(tracking.tracking_uri(config["tracking"])))
    return {**result, "run_id": run_id, "skipped": False}


def previous_result(client, experiment_id: str, run_key: str, force: bool, state_root: Path) -> dict | None:
    """The metrics of this exact config, code and data finished before (unless force), else None."""
    done = None if force else tracking.find_finished(client, experiment_id, run_key)
    if done is None:
        return None
    log.info("skipped: this exact config, code and data finished as run %s (force=true re-runs it)", done.info.run_id)
    shutil.rmtree(state_root, ignore_errors=True)  # stopped at the end
    return {**done.data.metrics, "run_id": done.info.run_id, "skipped": True}


def run_tags(config: dict, identity: dict, overrides, role: str | None, source_run: str | None) -> dict[str, str]:
    """What finds the run again: its identity, the commit, the overrides, the dataset, its role and source."""
    return {**{f"{tracking.TAG}{key}": value for key, value in identity.items()}, **tracking.git_tags(),
            f"{tracking.TAG}versions": tracking.package_versions(),
            **override_tags(overrides), f"{tracking.TAG}dataset": config["data"]["name"],
            **({f"{tracking.TAG}role": role} if role else {}),
            **({f"{tracking.TAG}source_run": source_run} if source_run else {})}


def run_to_the_end(config: dict, data, client, run_id: str, state: "ResumeState", workdir: Path | None,
                   source, trial: dict | None = None) -> dict:
    """Train and record inside the open run, then end it: FINISHED, or KILLED / FAILED with the
    resume state kept, so that the same command resumes it (a pruned trial too: KILLED, tagged)."""
    try:
        with workspace(workdir) as folder:
            result = record(config, data, client, run_id, state, folder, source, trial)
        tracking.end_run(client, run_id, "FINISHED")
    except TrialPruned as pruned:
        state.release()
        tracking.set_tag(client, run_id, f"{tracking.TAG}pruned_at_epoch", str(pruned.epoch))
        tracking.set_tag(client, run_id, f"{tracking.TAG}pruned", str(pruned))
        tracking.end_run(client, run_id, "KILLED")
        return pruned.result()
    except BaseException as error:
        state.release()  # kept: the same command resumes from the last finished epoch (or skips)
        uri = tracking.tracking_uri(config["tracking"])
        try:
            close_stopped_run(client, run_id, error)
        except (MlflowException, OSError) as lost:
            raise tracking.store_lost(uri, lost, f"run {run_id}") from error
        if isinstance(error, MlflowException) and tracking.disk_full(error):  # refused a write, took the FAILED mark
            raise tracking.store_lost(uri, error, f"run {run_id}", "FAILED") from error
        raise
    state.finish()
    return result


def close_stopped_run(client, run_id: str, error: BaseException) -> None:
    if tracking.is_finished(client.get_run(run_id).info.status):  # stopped just after it was recorded
        tracking.end_run(client, run_id, "FINISHED")
    else:
        interrupted = isinstance(error, KeyboardInterrupt)  # with its reason: a Slurm preemption names itself
        reason = (str(error) or "interrupted (SIGTERM or Ctrl-C)") if interrupted else one_line(error)
        tracking.end_run(client, run_id, "KILLED" if interrupted else "FAILED", reason or type(error).__name__)


def record(config: dict, data, client, run_id: str, state, folder: Path, source=None, trial: dict | None = None
           ) -> dict:
    """Inside the open run: params, dataset, training, metrics, then what the run leaves behind."""
    tracking.log_params(client, run_id, flatten(config))
    sink = tracking.MetricSink(client, run_id)
    progress = state.progress()
    if progress["epochs_done"] == 0:
        tracking.log_dataset(client, run_id, config["data"]["name"], data.path, data.meta["npz_sha256"][:20],
                             "training")
    logged = tracking.logged_steps(client, run_id)
    for epoch, logs in enumerate(progress["history"], start=1):  # backed up, not yet logged: the crash window
        if epoch not in logged:
            sink(epoch, logs)

    engine = engine_for(config["model"]["name"])
    monitor = EpochSampler(sink)
    if trial:  # a pruned search's trial: each epoch's objective to Optuna, which may stop it
        monitor = Reporter(trial).watch(monitor)
    result = engine.fit_and_evaluate(config, data, state, monitor, folder, source)
    model, example, confusion = result.pop("model"), result.pop("example"), result.pop("confusion_matrix", None)
    calibrated = result.pop("calibration", None)
    scored = client.get_run(run_id).data.metrics  # by an attempt stopped while recording: logged once
    sink(result["epochs_run"], {key: value for key, value in result.items() if key not in scored})
    if result["diverged_at_epoch"]:
        tracking.set_tag(client, run_id, f"{tracking.TAG}diverged",
                         f"loss became NaN at epoch {result['diverged_at_epoch']}")
    elif config["tracking"]["log_model"]:  # a diverged network is not worth keeping
        tracking.log_model(model, example)
    record_artifacts(config, data, client, run_id, folder, confusion, calibrated)
    return result


def record_artifacts(config: dict, data, client, run_id: str, folder: Path, confusion, calibrated) -> None:
    """The resolved config, Hydra's record of the job, the confusion matrix, MC dropout's calibration
    record and (tracking.log_figures) the figures."""
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    tracking.log_artifact(client, run_id, folder / "config.yaml")
    if (folder / ".hydra").is_dir():
        tracking.log_artifacts(client, run_id, folder / ".hydra", "hydra")
    if confusion is not None:
        tracking.log_dict(client, run_id, {"class_names": data.class_names, "rows_true_columns_predicted": confusion},
                          "confusion_matrix.json")
    if calibrated is not None:
        tracking.log_dict(client, run_id, {"class_names": data.class_names, **calibrated}, calibration.ARTIFACT)
    if config["tracking"]["log_figures"]:
        log_figures(config, data, client, run_id, folder, confusion, calibrated)


def log_figures(config: dict, data, client, run_id: str, folder: Path, confusion, calibrated) -> None:
    """Learning curves, the confusion matrix, (an MLP's diagnostics) gradients by depth and (MC dropout)
    the reliability diagram, as PNGs."""
    history = tracking.metric_histories(client, run_id, ("loss", "accuracy", "val_", "learning_rate", "grad_norm/",
                                                         "act_std/"))
    tracking.log_artifact(client, run_id, figures.learning_curves(history, folder / "learning_curves.png"), "figures")
    if confusion is not None:
        tracking.log_artifact(client, run_id, figures.confusion_matrix(confusion, data.class_names,
                                                                       folder / "confusion_matrix.png"), "figures")
    if config["diagnostics"]["enabled"] and FAMILIES[config["model"]["name"]].gradient_figure:
        tracking.log_artifact(client, run_id, figures.gradients_by_depth(history, folder / "gradients.png"), "figures")
    if calibrated is not None:
        tracking.log_artifact(client, run_id, figures.reliability_diagram(calibrated, folder / "reliability.png"),
                              "figures")


def engine_for(model_name: str):
    """The module that trains a model family (src/families.py), imported with TensorFlow on first use.

    What is imported by then (TensorFlow, Keras, MLflow: millions of objects) lives as long
    as the process; gc.freeze() takes it out of the collector's sight, so a full collection
    (Keras's clear_session() runs one per job) scans only what the jobs made since: 0.5 s
    less per job.
    """
    engine = importlib.import_module(FAMILIES[model_name].engine)
    if not gc.get_freeze_count():  # once per process: a later freeze would keep a finished job's garbage
        gc.freeze()
    return engine


def pretrained_source(config: dict, parent_run_id: str | None) -> tuple:
    """A transfer recipe's source model and its run: trained once as its own run (or found finished), then loaded.

    The runtime is configured before the load: TensorFlow fixes its thread pools at its first op,
    so a source loaded first in a fresh worker would otherwise leave the job on every core
    instead of `threads` (slower next to the other worker, and its sums in another order).
    """
    result = train(source_config(config), parent_run_id=parent_run_id, role=source_role(config))
    from src.fitting import configure_runtime  # noqa: PLC0415 (TensorFlow: only when a source is reused)

    configure_runtime(config)
    return tracking.load_model(result["run_id"]), result["run_id"]


def override_tags(overrides) -> dict[str, str]:
    tags = {f"override.{item.split('=', 1)[0].lstrip('+~')}": item.split("=", 1)[-1] for item in overrides}
    return {**tags, "ch11.overrides": " ".join(overrides)} if overrides else tags


@contextlib.contextmanager
def workspace(workdir: Path | None):
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
    else:
        with tempfile.TemporaryDirectory(prefix="ch11-run-") as folder:
            yield Path(folder)
