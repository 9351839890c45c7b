"""Train any chapter-11 configuration and record it in MLflow.

    python -m src.train                                 # conf/config.yaml as it stands
    python -m src.train optimizer=nadam model.depth=5   # any value, any group option
    python -m src.train -m optimizer=adam,nadam         # a sweep: parent run + one child per job
    python -m src.train --help | --cfg job              # the groups and the resolved config

main() is the thin Hydra wrapper; train(cfg) is the whole job and can be called directly:
validate -> connect to MLflow -> skip if this exact config already finished -> resume or
start the run -> fit and evaluate -> log model, figures, config -> end the run.
TensorFlow and MLflow are imported only when a job trains, so --help answers at once.
"""

import contextlib
import gc
import importlib
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.cli import INTERRUPTED_EXIT, USER_ERROR_EXIT
from src.config import flatten, run_identity, validate
from src.errors import LabError, one_line, storage_error

REPO = Path(__file__).resolve().parents[1]
ENGINES = {"mlp": "src.engine", "mobilenet_v2": "src.pretrained.engine"}  # model.name -> what trains it
PRETRAINED = ("mobilenet_v2",)  # families on a pretrained base, whose weights are checked before a run starts
log = logging.getLogger("src.train")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before it loads
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a transfer job loads its source model


def train(cfg: DictConfig | dict, workdir: Path | None = None, parent_run_id: str | None = None,
          overrides: list[str] | tuple[str, ...] = (), role: str | None = None) -> dict:
    """Run one job; returns its test metrics, run id and whether it was skipped.

    role names a run that another job needs (a transfer source), as a tag and run name.
    """
    config = validate(cfg)
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 (heavy imports: only when a job really runs)

    from src import tracking  # noqa: PLC0415
    from src.data.load import reshape_splits  # noqa: PLC0415
    from src.data.shared import prepared_once  # noqa: PLC0415
    from src.resume import ResumeState  # noqa: PLC0415

    client = tracking.connect(config["tracking"])  # fail fast: before data, model or training
    experiment_id = tracking.ensure_experiment(client, config["name"], config["tracking"])
    tracking.close_orphans(client, experiment_id)
    prepared = prepared_once(in_repo(config["data"]["path"]))
    identity = run_identity(config, prepared.meta["npz_sha256"], tracking.code_hash(config["model"]["name"]))
    state_root = in_repo(config["state_dir"]) / identity["run_key"]

    def finished_before() -> dict | None:
        done = None if config["force"] else tracking.find_finished(client, experiment_id, identity["run_key"])
        if done is None:
            return None
        log.info("skipped: this exact config, code and data finished as run %s (force=true re-runs it)",
                 done.info.run_id)
        shutil.rmtree(state_root, ignore_errors=True)  # stopped at the end
        return {**done.data.metrics, "run_id": done.info.run_id, "skipped": True}

    if done := finished_before():
        return done
    if config["model"]["name"] in PRETRAINED:  # fetch or find the base's weights: fail now, not mid-run
        from src.pretrained.model import weights_file

        weights_file(config["model"], config["data"]["resize"][0])
    source, source_run = (pretrained_source(config, parent_run_id) if config["transfer"]["source_classes"]
                          else (None, None))
    data = reshape_splits(prepared, config["data"]["train_size"], config["validation_split"],
                          config["data"]["classes"])
    state = ResumeState(state_root)  # waits for a process training this exact config, then:
    if done := finished_before():  # skip what it finished (or resume below what it left)
        state.release()
        return done
    tags = {**{f"{tracking.TAG}{key}": value for key, value in identity.items()}, **tracking.git_tags(),
            **override_tags(overrides), f"{tracking.TAG}dataset": config["data"]["name"],
            **({f"{tracking.TAG}role": role} if role else {}),
            **({f"{tracking.TAG}source_run": source_run} if source_run else {})}
    run_id = tracking.start_run(client, experiment_id, state.run_id, parent_run_id,
                                " ".join(overrides)[:100] or role or "default", tags)
    state.remember_run(run_id)
    try:
        with workspace(workdir) as folder:
            result = record(config, data, client, run_id, state, folder, source)
        tracking.end_run(client, run_id, "FINISHED")
    except BaseException as error:
        state.release()  # kept: the same command resumes from the last finished epoch (or skips)
        try:
            close_stopped_run(client, run_id, error)
        except (MlflowException, OSError) as lost:
            raise tracking.store_lost(tracking.tracking_uri(config["tracking"]), lost, f"run {run_id}") from error
        raise
    state.finish()
    log.info("run %s finished: test_accuracy %.4f after %d epochs (MLflow experiment %r at %s)", run_id,
             result["test_accuracy"], result["epochs_run"], config["name"], tracking.tracking_uri(config["tracking"]))
    return {**result, "run_id": run_id, "skipped": False}


def close_stopped_run(client, run_id: str, error: BaseException) -> None:
    from src import tracking  # noqa: PLC0415

    if tracking.is_finished(client.get_run(run_id).info.status):  # stopped just after it was recorded
        tracking.end_run(client, run_id, "FINISHED")
    else:
        interrupted = isinstance(error, KeyboardInterrupt)
        tracking.end_run(client, run_id, "KILLED" if interrupted else "FAILED",
                         "interrupted (SIGTERM or Ctrl-C)" if interrupted else one_line(error) or type(error).__name__)


def record(config: dict, data, client, run_id: str, state, folder: Path, source=None) -> dict:
    """Inside the open run: params, dataset, training, metrics, model, figures, config."""
    import mlflow  # noqa: PLC0415

    from src import engine, figures, tracking  # noqa: PLC0415

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

    result = engine_for(config["model"]["name"]).fit_and_evaluate(config, data, state, sink, folder, source)
    model, example, confusion = result.pop("model"), result.pop("example"), result.pop("confusion_matrix", None)
    sink(result["epochs_run"], result)
    if result["diverged_at_epoch"]:
        mlflow.set_tag("ch11.diverged", f"loss became NaN at epoch {result['diverged_at_epoch']}")
    elif config["tracking"]["log_model"]:  # a diverged network is not worth keeping
        log_model(engine.inference_copy(model), example)
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    mlflow.log_artifact(str(folder / "config.yaml"))
    if (folder / ".hydra").is_dir():
        mlflow.log_artifacts(str(folder / ".hydra"), "hydra")
    history = tracking.metric_histories(client, run_id, ("loss", "accuracy", "val_", "learning_rate", "grad_norm/",
                                                         "act_std/"))
    mlflow.log_artifact(str(figures.learning_curves(history, folder / "learning_curves.png")), "figures")
    if confusion is not None:
        mlflow.log_dict({"class_names": data.class_names, "rows_true_columns_predicted": confusion},
                        "confusion_matrix.json")
        mlflow.log_artifact(str(figures.confusion_matrix(confusion, data.class_names, folder / "confusion_matrix.png")),
                            "figures")
    if config["diagnostics"]["enabled"] and config["model"]["name"] == "mlp":
        mlflow.log_artifact(str(figures.gradients_by_depth(history, folder / "gradients.png")), "figures")
    return result


def engine_for(model_name: str):
    """The module that trains a model family (ENGINES), imported with TensorFlow on first use.

    What is imported by then (TensorFlow, Keras, MLflow: millions of objects) lives as long
    as the process; gc.freeze() takes it out of the collector's sight, so a full collection
    (Keras's clear_session() runs one per job) scans only what the jobs made since: 0.5 s
    less per job.
    """
    engine = importlib.import_module(ENGINES[model_name])
    if not gc.get_freeze_count():  # once per process: a later freeze would keep a finished job's garbage
        gc.freeze()
    return engine


def pretrained_source(config: dict, parent_run_id: str | None) -> tuple:
    """A transfer recipe's source model and its run: trained once as its own run (or found finished), then loaded."""
    import mlflow  # noqa: PLC0415

    from src.config import source_config  # noqa: PLC0415
    from src.errors import TrackingError  # noqa: PLC0415

    classes = ",".join(map(str, config["transfer"]["source_classes"]))
    result = train(source_config(config), parent_run_id=parent_run_id, role=f"source model (classes {classes})")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return mlflow.keras.load_model(f"runs:/{result['run_id']}/model"), result["run_id"]
    except Exception as error:  # noqa: BLE001 (any failure to read it has the same fix)
        run_id, uri = result["run_id"], mlflow.get_tracking_uri()
        raise TrackingError(f"cannot load the source model runs:/{run_id}/model ({one_line(error, 160)}); "
                            f"delete that run (MLFLOW_TRACKING_URI={uri} mlflow runs delete --run-id {run_id}) "
                            "and the same command trains it again") from None


def log_model(model, example) -> None:
    """The trained network as the run's MLflow model, its signature taken from a few test inputs.

    No input example: MLflow would reload the saved model to check it (its own advice is a
    signature instead), a second per run. Pinned requirements: MLflow's own inference would
    re-import the world, seconds per run.
    """
    import keras  # noqa: PLC0415
    import mlflow  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    signature = infer_signature(example, keras.ops.convert_to_numpy(model(example, training=False)))
    mlflow.keras.log_model(model, name="model", signature=signature,
                           pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"])


def override_tags(overrides) -> dict[str, str]:
    tags = {f"override.{item.split('=', 1)[0].lstrip('+~')}": item.split("=", 1)[-1] for item in overrides}
    return {**tags, "ch11.overrides": " ".join(overrides)} if overrides else tags


def in_repo(path: str) -> Path:
    """Config paths are relative to the repository root, whatever the working directory."""
    return Path(path) if Path(path).is_absolute() else REPO / path


@contextlib.contextmanager
def workspace(workdir: Path | None):
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        yield workdir
    else:
        with tempfile.TemporaryDirectory(prefix="ch11-run-") as folder:
            yield Path(folder)


# An absolute config path: Hydra resolves a relative one against the calling module's package
# when this file is imported (src.chapter runs it in-process) rather than run as a script.
@hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict:
    from src.sweep import parent_run_id  # noqa: PLC0415

    hydra_config = HydraConfig.get()
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    try:
        return train(cfg, Path(hydra_config.runtime.output_dir),
                     parent_run_id(hydra_config.sweep.dir) if in_sweep else None, list(hydra_config.overrides.task))
    except LabError as error:
        if in_sweep:
            raise  # the sweeper reports it once the other jobs have run
        print(f"error: {error_line(error)}", file=sys.stderr)  # before Hydra adds its own report
        sys.exit(USER_ERROR_EXIT)


def cli() -> None:
    """main() with every user mistake, Hydra's included, as one line and exit code 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises (to the lines below) instead of its own report
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        main()
    except (LabError, HydraException, OmegaConfBaseException) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except OSError as error:
        if (problem := storage_error(error, "a file", "free space (or point state_dir and hydra.run.dir elsewhere) "
                                     "and run the same command: it resumes from its last finished epoch")) is error:
            raise  # not a disk problem: a bug, keep its traceback
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)
    except KeyboardInterrupt:
        print("error: interrupted; the run is marked KILLED and the same command resumes it from its last "
              "finished epoch", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)


def stop_on_sigterm(signum, frame) -> None:
    """A cluster's preemption (SIGTERM) stops the job like Ctrl-C: run KILLED, resume state kept."""
    raise KeyboardInterrupt


def error_line(error: BaseException) -> str:
    """Hydra's multi-line reports as one line: lists joined with commas, search path dropped."""
    lines = [line.strip() for line in str(error).split("Config search path")[0].splitlines() if line.strip()]
    text, listing = (lines[0], lines[0].endswith(":")) if lines else ("", False)
    for line in lines[1:]:
        text += (" " if text.endswith(":") else ", ") + line if listing else (" " if text.endswith(".") else "; ") + line
        listing = listing or line.endswith(":")
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        text += f" ({str(cause).splitlines()[0]})"
    if "is not in struct" in text:
        text += "; check the spelling: `python -m src.train --help` lists every key"
    return text


if __name__ == "__main__":
    cli()
