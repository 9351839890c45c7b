"""MLflow: where runs go, how they start, resume and end, what identifies them.

The store is explicit and absolute (tracking.uri, else MLFLOW_TRACKING_URI, else
sqlite:///<repo>/mlflow.db with artifacts in <repo>/mlartifacts), so runs land in the
same place whatever the working directory. It is checked before any training starts.
"""

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from src import interrupts
from src.errors import TrackingError, one_line
from src.families import COMMON_CODE, FAMILIES
from src.paths import REPO
from src.slurm import current_job
from src.store_faults import artifact_writes, disk_full, read_only, shown, sqlite_file, store_problem
from src.store_template import start_from_template

log = logging.getLogger(__name__)

DEFAULT_URI = f"sqlite:///{REPO / 'mlflow.db'}"

# Every client call returns before a Ctrl-C or SIGTERM stops the job: one raised inside a SQLite commit
# left the database locked against the job's own closing writes (src/interrupts.py).
StoreClient = interrupts.completing(MlflowClient, "StoreClient")

TAG = "ch11."  # prefix of our own tags
BATCH = 1000  # MLflow's limit of metrics per log_batch call


def tracking_uri(tracking: dict) -> str:
    return tracking["uri"] or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def connect(tracking: dict) -> MlflowClient:
    """A client for the configured store, or a TrackingError that says how to fix it."""
    uri = tracking_uri(tracking)
    if uri.startswith(("http://", "https://")):
        probe_server(uri)
    if problem := store_problem(uri):
        raise TrackingError(problem)
    from alembic.util.exc import CommandError  # noqa: PLC0415 (MLflow's own database layer)
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    try:
        with schema_lock(uri):
            client = StoreClient(uri)  # a SQLite store is opened (its folder made) here
            client.search_experiments(max_results=1)  # creates a fresh SQLite schema, proves the store works
    except (MlflowException, OSError, SQLAlchemyError, CommandError) as error:  # CommandError: an unknown schema
        if read_only(error):
            raise TrackingError(f"MLflow store {shown(uri)} cannot be written ({one_line(error)}): its disk is "
                                "read-only or the file is not writable; remount it read-write or fix its permissions, "
                                "or point tracking.uri / MLFLOW_TRACKING_URI at a writable store") from None
        raise TrackingError(f"MLflow store {shown(uri)} is not usable ({one_line(error)}); "
                            "fix tracking.uri / MLFLOW_TRACKING_URI") from None
    mlflow.set_tracking_uri(uri)
    return client


@contextlib.contextmanager
def schema_lock(uri: str):
    """One process at a time creates a fresh SQLite store's schema.

    MLflow runs its migrations when it first opens a store; processes that open a new
    store at once race through them ("table _alembic_tmp_experiments already exists",
    "Online migration expected to match one row"). A lock file beside the database orders them,
    and the first one makes the store a copy of the cached empty one (src/store_template.py).
    """
    database = sqlite_file(uri)
    if database is None:
        yield  # a server or a database server serialises its own schema changes
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f".{database.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start_from_template(database)  # a new store: copied, not migrated
        yield


def probe_server(uri: str, timeout_s: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except (urllib.error.URLError, OSError) as error:
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({getattr(error, 'reason', error)}); "
                            "start it or point tracking.uri / MLFLOW_TRACKING_URI elsewhere") from None


def ensure_experiment(client: MlflowClient, name: str, tracking: dict) -> str:
    """The id of experiment `name`, created (with our artifact location) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(tracking))
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


def artifact_location(tracking: dict) -> str | None:
    """Explicit, else beside a local SQLite store (MLflow's default is ./mlruns of the cwd)."""
    if tracking["artifact_location"]:
        return Path(tracking["artifact_location"]).resolve().as_uri()
    database = sqlite_file(tracking_uri(tracking))
    if database is not None:
        return (database.parent / "mlartifacts").as_uri()
    return None  # a tracking server decides


def find_finished(client: MlflowClient, experiment_id: str, run_key: str):
    runs = client.search_runs([experiment_id], f"tags.`{TAG}run_key` = '{run_key}' and attributes.status = 'FINISHED'",
                              max_results=1, order_by=["attributes.end_time DESC"])
    return runs[0] if runs else None


def start_run(client: MlflowClient, experiment_id: str, resume_id: str | None, parent_run_id: str | None,
              run_name: str, tags: dict[str, str]) -> str:
    """Start (or, after a crash, continue) the job's run as the process's active MLflow run."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # set by `mlflow run`: it would swallow this run
    if resume_id is not None:
        try:
            run = client.get_run(resume_id)
            if run.info.lifecycle_stage == "active":
                if f"{TAG}failure" in run.data.tags:  # the stop it recorded is over
                    client.delete_tag(resume_id, f"{TAG}failure")
                for key, value in owner_tags().items():  # its owner now
                    client.set_tag(resume_id, key, value)
                if parent_run_id is not None:  # the sweep that finishes it (an earlier one was stopped)
                    client.set_tag(resume_id, "mlflow.parentRunId", parent_run_id)
                drop_unfinished_models(client, run)  # a kill after log_model, before FINISHED
                with interrupts.deferred():
                    return mlflow.start_run(run_id=resume_id).info.run_id
        except MlflowException:
            pass  # deleted from the store: start afresh
    with interrupts.deferred():
        run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, parent_run_id=parent_run_id,
                               tags={**tags, **owner_tags()})
    return run.info.run_id


def drop_unfinished_models(client: MlflowClient, run) -> None:
    """Delete the models a killed attempt logged (PENDING if cut mid-write): the resumed run logs its own.

    A run is resumed only when it did not finish, so none of its models is a result yet.
    """
    for model in client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'"):
        client.delete_logged_model(model.model_id)


# -- runs whose process died before it could close them ------------------------------------

PROCESS_TAG = f"{TAG}process"  # host:pid:start time of the process that owns a RUNNING run
SLURM_TAG = f"{TAG}slurm_job"  # the Slurm job (array job_task) that runs it, under hydra/launcher=slurm


def owner_tags() -> dict[str, str]:
    """Who runs the run now: this process, and the Slurm job it belongs to (refreshed when a run resumes)."""
    slurm_job = current_job()
    return {PROCESS_TAG: process_id(), **({SLURM_TAG: slurm_job} if slurm_job else {})}


def process_id(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_ticks(pid)}"


def start_ticks(pid: int) -> str:
    """When a process started (Linux /proc, clock ticks): a reused pid has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def process_gone(owner: str) -> bool:
    """True only when the owner ran on this host and is certainly not running any more."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's (a cluster node): it cannot be seen from here
    if Path("/proc").is_dir():
        return process_id(int(pid)) != owner  # gone, or its pid now belongs to a newer process
    return not _pid_exists(int(pid))


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def close_orphans(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark KILLED the experiment's RUNNING runs whose process on this host is gone.

    A SIGKILL, a power cut or a tracking server that stopped answering leaves a run
    RUNNING for ever; the next job or sweep on the machine says what happened instead.
    Their resume state is untouched: the same command still resumes them.
    """
    orphans = [run for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
               if process_gone(run.data.tags.get(PROCESS_TAG, ""))]
    for run in orphans:
        end_run(client, run.info.run_id, "KILLED",
                f"its process ({run.data.tags[PROCESS_TAG]}) ended without closing it (killed, or the tracking store "
                "stopped answering); the same command resumes it")
        log.warning("run %s was left RUNNING by a process that is gone: marked KILLED", run.info.run_id)
    return [run.info.run_id for run in orphans]


def store_lost(uri: str, error: BaseException, left_running: str, status: str = "RUNNING") -> TrackingError:
    """The error for a store that stopped answering (or whose disk filled) mid-run: what stays RUNNING
    (or was marked `status`) and how it is closed."""
    if full := disk_full(error):
        return TrackingError(f"MLflow store {shown(uri)} cannot be written: its disk is full ({full}); {left_running} "
                             f"stays {status} there: free space on that disk and run the same command (it resumes the "
                             "run from its last finished epoch)")
    return TrackingError(f"MLflow store {shown(uri)} stopped answering ({one_line(error, 200)}); {left_running} stays "
                         "RUNNING there: run the same command again once the store is back (it resumes unfinished "
                         "jobs and marks runs whose process is gone KILLED)")


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None) -> None:
    """Record the run's end through the client (the fluent API would open a new run if the
    active one were already closed), then close it in this process."""
    if reason:
        client.set_tag(run_id, f"{TAG}failure", reason[:5000])
    client.set_terminated(run_id, status)
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        with interrupts.deferred():
            mlflow.end_run(status)


def log_params(client: MlflowClient, run_id: str, params: dict) -> None:
    logged = client.get_run(run_id).data.params
    fresh = [Param(key, str(value)[:6000]) for key, value in params.items() if key not in logged]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start : start + 100])


class MetricSink:
    """sink(step, metrics): one log_batch per call, written before the call returns.

    Synchronous on purpose: a log_batch costs ~10 ms (50 ms for a 50-layer network's
    diagnostics) on SQLite, while MLflow's async queue made every run's end wait ~0.8 s
    for its thread (which polls its queue once a second). What was logged is in the store
    when the epoch ends, so a kill loses nothing; the resume backup and src/job.py still log
    any epoch missing from the store on restart.
    """

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(key, value, now, step) for key, value in metrics.items()]
        for start in range(0, len(batch), BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + BATCH])


def log_dataset(client: MlflowClient, run_id: str, name: str, path: Path, digest: str, context: str,
                attempts: int = 3) -> None:
    """The prepared dataset as an MLflow input of the run.

    The store checks for the experiment's dataset row, then inserts it: jobs that log the
    same new dataset at once race on its UNIQUE key, and the loser finds the row when it
    tries again. (A sweep's parent logs its datasets first, so its own jobs never race;
    two sweeps started together still can.)
    """
    dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": str(path)}))
    inputs = [DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    for attempt in range(1, attempts + 1):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as error:
            if "unique constraint" not in str(error).lower() or attempt == attempts:
                raise
            time.sleep(0.05 * attempt)


def logged_steps(client: MlflowClient, run_id: str, key: str = "loss") -> set[int]:
    return {metric.step for metric in client.get_metric_history(run_id, key)}


def metric_histories(client: MlflowClient, run_id: str, prefixes: tuple[str, ...]) -> dict[str, list]:
    """{key: [(step, value), ...]} for every metric of the run whose name starts with a prefix."""
    keys = [key for key in client.get_run(run_id).data.metrics if key.startswith(prefixes)]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in keys}


def log_artifact(client: MlflowClient, run_id: str, path: Path, folder: str | None = None) -> None:
    with artifact_writes(client, run_id):
        client.log_artifact(run_id, str(path), folder)


def log_artifacts(client: MlflowClient, run_id: str, local_folder: Path, folder: str) -> None:
    with artifact_writes(client, run_id):
        client.log_artifacts(run_id, str(local_folder), folder)


def log_dict(client: MlflowClient, run_id: str, value: dict, file: str) -> None:
    with artifact_writes(client, run_id):
        client.log_dict(run_id, value, file)


def load_dict(client: MlflowClient, run_id: str, file: str) -> dict:
    """A JSON artifact of a run (log_dict's), read back (without MLflow's progress bar on stderr)."""
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stderr(io.StringIO()):
        return json.loads(Path(client.download_artifacts(run_id, file, folder)).read_text())


def set_tag(client: MlflowClient, run_id: str, key: str, value: str) -> None:
    client.set_tag(run_id, key, value)


def log_model(model, example) -> None:
    """The trained network, without its optimizer, as the active run's MLflow model; its
    signature is taken from a few test inputs.

    No input example: MLflow would reload the saved model to check it (its own advice is a
    signature instead), a second per run. Pinned requirements: MLflow's own inference would
    re-import the world, seconds per run.
    """
    import keras  # noqa: PLC0415 (TensorFlow: only once a job has trained)
    import tensorflow as tf  # noqa: PLC0415
    from mlflow.models import infer_signature  # noqa: PLC0415

    network = keras.models.clone_model(model)  # the same layers and weights, no optimizer state
    network.set_weights(model.get_weights())
    signature = infer_signature(example, keras.ops.convert_to_numpy(network(example, training=False)))
    with artifact_writes(StoreClient(), mlflow.active_run().info.run_id), interrupts.deferred():
        mlflow.keras.log_model(network, name="model", signature=signature,
                               pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"])


def load_model(run_id: str):
    """The MLflow model a run logged, or a TrackingError with the command that makes it again."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return mlflow.keras.load_model(f"runs:/{run_id}/model")
    except Exception as error:  # noqa: BLE001 (any failure to read it has the same fix)
        uri = mlflow.get_tracking_uri()
        raise TrackingError(f"cannot load the source model runs:/{run_id}/model ({one_line(error, 160)}); "
                            f"delete that run (MLFLOW_TRACKING_URI={uri} mlflow runs delete --run-id {run_id}) "
                            "and the same command trains it again") from None


def is_finished(status: str) -> bool:
    return status == RunStatus.to_string(RunStatus.FINISHED)


# -- what identifies a result: config, code and data -----------------------------------------

# The code that turns a config and data into numbers, per model family: what a run key hashes
# and what the DVC experiment stages depend on (src/families.py: COMMON_CODE and each family's
# code; dvc.yaml lists the same files, a test keeps the two in step). The rest of src/ is
# wiring: it chooses which code runs on which config and records, prints, draws or reads it;
# a change there reaches a result only through the resolved config, which the run key hashes
# too. Adding a family's code leaves the other families' keys (and their finished runs) as they are.
RESULT_CODE = {"common": COMMON_CODE, **{name: family.code for name, family in FAMILIES.items()}}


def result_files(model_name: str) -> list[Path]:
    """The result code of a model family (folders: every .py below), sorted."""
    files = set()
    for entry in (*RESULT_CODE["common"], *RESULT_CODE[model_name]):
        path = REPO / entry
        files.update(path.rglob("*.py") if path.is_dir() else [path])
    return sorted(files)


def code_hash(model_name: str) -> str:
    """SHA-256 over the result code of a model family (tracked or not, as it is on disk)."""
    digest = hashlib.sha256()
    for path in result_files(model_name):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def git_tags() -> dict[str, str]:
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {f"{TAG}git_dirty": "unknown (not a git checkout)"}
    return {"mlflow.source.git.commit": commit, f"{TAG}git_dirty": str(bool(git("status", "--porcelain")))}


# The packages whose versions can move a result: a rerun (python -m src.runs rerun) reports the ones that changed.
VERSIONED = ("tensorflow", "keras", "numpy", "mlflow", "hydra-core", "scipy")


@functools.cache
def package_versions() -> str:
    """The run's ch11.versions tag: "python=3.11.7 tensorflow=2.21.0 ..."."""
    import platform  # noqa: PLC0415
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    def installed(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "absent"

    return " ".join([f"python={platform.python_version()}", *(f"{name}={installed(name)}" for name in VERSIONED)])
