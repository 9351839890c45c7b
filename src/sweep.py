"""Hydra's basic sweeper, made safe for long sweeps (hydra/sweeper=validating, the default).

1. Every job's config is composed and validated before the first job trains: a typo in
   job 7 stops the sweep at once, not after six trained models.
2. The sweep is one MLflow parent run; each job finds its id in <sweep dir>/mlflow_parent.json
   and becomes a child run (also when launchers run jobs in other processes or machines).
   The parent ends FINISHED, FAILED (with the failed jobs named) or KILLED, whatever happens.
3. Jobs that fail do not stop the others; the sweep then exits with one line per failure.
4. When all succeed, <sweep dir>/jobs.json lists every job's swept values and MLflow run
   (skipped jobs included): what the pipeline's per-experiment summary reads.
5. An arm can sweep values of its own (hydra.sweeper.arm_params), for instance more seeds for
   the one arm whose results spread widely, without giving them to every arm of the grid.
"""

import fcntl
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf, open_dict

from src.config import validate
from src.data.load import require_prepared
from src.errors import ConfigError, LabError
from src.paths import REPO, in_repo, write_json

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent.json"
JOBS_FILE = "jobs.json"
STOP_FILE = "fail_fast.stop"  # a failed job's note to the jobs after it (hydra.sweeper.fail_fast=true)


class NotRun(LabError):
    """A job the sweep did not start: an earlier job failed, and the sweep stops at the first failure."""


class ValidatingSweeper(BasicSweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None, fail_fast: bool = False,
                 arm_params: dict | None = None):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.fail_fast = fail_fast  # read by the jobs themselves (stop_if_failed_before, job_failed)
        self.arm_params = arm_params

    def sweep(self, arguments: list[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs, swept = expand_jobs(parser, self._parse_config(), arguments, self.arm_params)
        batches = ([jobs] if self.max_batch_size is None
                   else list(self.split_overrides_to_chunks(jobs, self.max_batch_size)))
        configs = [self.job_config(job) for job in jobs]
        for path in sorted({in_repo(config["data"]["path"]) for config in configs}):
            require_prepared(path)  # a missing dataset: one line now, not a failure per job
        if hasattr(self.launcher, "start_workers"):  # the parallel launcher's head start (src/launcher.py)
            self.launcher.start_workers()

        sweep_dir = Path(self.config.hydra.sweep.dir)
        lock = hold(sweep_dir)  # held until the sweep is concluded
        (sweep_dir / JOBS_FILE).unlink(missing_ok=True)  # written again only when every job succeeded
        (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # an earlier sweep's failure stops none of these jobs
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = ParentRun(configs, sweep_dir, arguments)  # a store it cannot use: refused here, one line
        log.info("validated the configs of all %d jobs", len(jobs))  # after the last refusal: nothing before it
        conclude = functools.partial(self.conclude, parent, sweep_dir, jobs, swept)
        try:
            if QUEUE is not None and len(batches) == 1 and hasattr(self.launcher, "submit"):
                QUEUE.append(QueuedSweep(self.launcher.submit(batches[0], initial_job_idx=0), conclude, parent, lock))
                return None  # concluded by whoever opened the queue (src.chapter)
            results, index = [], 0
            for batch in batches:
                results.append(self.launcher.launch(batch, initial_job_idx=index))
                index += len(batch)
        except BaseException as error:
            parent.stopped_by(error)
            raise
        return conclude(results)

    def conclude(self, parent: "ParentRun", sweep_dir: Path, jobs: list[list[str]], swept: set[str],
                 results: list) -> list:
        """Once every job returned: the failures reported, or jobs.json written and the parent FINISHED."""
        returns = [job_return for batch in results for job_return in batch]
        failures = [(index, job, job_error(job_return))
                    for index, (job, job_return) in enumerate(zip(jobs, returns, strict=True))
                    if job_return.status == JobStatus.FAILED]
        skipped = sum(1 for job_return in returns if job_return.status != JobStatus.FAILED
                      and isinstance(job_return.return_value, dict) and job_return.return_value.get("skipped"))
        release_workers()  # not after an interrupt: the workers are still closing their runs
        report_failures(failures, len(jobs), parent)
        jobs_file = record_jobs(sweep_dir, parent, jobs, swept, returns)
        parent.end("FINISHED", tags={"ch11.skipped": str(skipped)}, artifact=jobs_file,  # skipped: finished before
                   jobs=[job for job in json.loads(jobs_file.read_text())["jobs"] if job["run_id"]])
        return results

    def job_config(self, job: list[str]) -> dict:
        return job_config(self.hydra_context, self.config, job)


def expand_jobs(parser: OverridesParser, params: list[str], arguments: list[str],
                arm_params: dict | None) -> tuple[list[list[str]], set[str]]:
    """The sweep's jobs, each a list of "key=value" overrides, and the keys that vary between them.

    First the grid of hydra.sweeper.params and the command line, as Hydra's basic sweeper expands
    it (a key given on the command line replaces the grid's). Then hydra.sweeper.arm_params,
    {key: {value: {other key: values}}}: a job whose key has that value (an arm) takes the arm's
    own values of the other keys, each a sweep (range(42,62), a,b,c), unless the command line
    gives that key: `seed=42` narrows every arm to seed 42. A job met twice (two grid seeds widened
    into the same arm seeds) runs once, where it first appears.
    """
    overrides = parser.parse_overrides([*params, *arguments])
    swept = {override.get_key_element() for override in overrides if override.is_sweep_override()}
    given = {override.get_key_element() for override in parser.parse_overrides(arguments)}
    own = {}  # "key=value" (an arm) -> its jobs' own overrides (those the command line leaves alone)
    for key, by_value in (arm_params or {}).items():
        for value, values in by_value.items():
            parsed = [override for override in parser.parse_overrides([f"{k}={v}" for k, v in values.items()])
                      if override.get_key_element() not in given]
            own[f"{key}={value}"] = [list(job) for job in BasicSweeper.split_arguments(parsed, None)[0]]
            swept |= {override.get_key_element() for override in parsed if override.is_sweep_override()}
    jobs, seen = [], set()
    for job in (list(job) for job in BasicSweeper.split_arguments(overrides, None)[0]):
        arms = [arm for arm in own if arm in job]
        if len(arms) > 1:
            raise ConfigError(f"job ({' '.join(job)}) belongs to two arms of hydra.sweeper.arm_params, "
                              f"{' and '.join(arms)}: give each job at most one")
        for values in own[arms[0]] if arms else [[]]:
            widened = with_values(job, values)
            if tuple(widened) not in seen:
                seen.add(tuple(widened))
                jobs.append(widened)
    return jobs, swept


def experiment_jobs(experiment: str, arguments: list[str]) -> list[dict[str, str]]:
    """The swept values of each job of `python -m src.train -m experiment=<experiment> <arguments>`,
    in the order the sweep runs them, known without running it (the benchmarks, the tests)."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415

    parser = OverridesParser.create()
    arguments = [f"experiment={experiment}", *arguments]
    fixed = [override.input_line for override in parser.parse_overrides(arguments) if not override.is_sweep_override()]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        sweeper = compose("config", fixed, return_hydra_config=True).hydra.sweeper
    params = [f"{key}={value}" for key, value in (sweeper.params or {}).items()]
    jobs, swept = expand_jobs(parser, params, arguments, sweeper.arm_params)
    return [{key: value for key, value in (item.split("=", 1) for item in job) if key in swept} for job in jobs]


def with_values(job: list[str], values: list[str]) -> list[str]:
    """The job's overrides with each of values ("key=value") in place of the job's value of that key."""
    replace = {item.split("=", 1)[0]: item for item in values}
    kept = [replace.pop(item.split("=", 1)[0], item) for item in job]
    return [*kept, *replace.values()]


def hold(sweep_dir: Path):
    """Create the sweep folder and lock it: two sweeps in one folder would mix their jobs' files and parents."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = open(sweep_dir / ".sweep.lock", "w")  # noqa: SIM115 (released when the sweep's process ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ConfigError(f"another sweep is running in {sweep_dir}; give this one its own folder "
                          "(hydra.sweep.dir=...) or wait for it") from None
    return lock


# src.chapter: a list while several sweeps run in this process on the same workers. A sweep then
# returns as soon as its jobs are queued on them, leaving a QueuedSweep here, so that the next
# sweep's jobs queue behind them; and the workers stay up for it (release_workers).
QUEUE: list["QueuedSweep"] | None = None


class QueuedSweep:
    """A sweep whose jobs are queued on the workers: finish() waits for them and concludes the sweep
    (its jobs.json and parent run), as the sweep itself does when nothing follows it."""

    def __init__(self, returns, conclude, parent: "ParentRun", lock):
        self.returns, self.conclude, self.parent, self.lock = returns, conclude, parent, lock

    def finish(self) -> None:
        try:
            results = [self.returns()]
        except BaseException as error:
            self.parent.stopped_by(error)
            raise
        finally:
            self.lock.close()
        self.conclude(results)

    def stop(self, error: BaseException) -> None:
        """End the parent for what stopped the run before this sweep was waited for (its jobs see it too)."""
        self.parent.stopped_by(error)
        self.lock.close()


def release_workers() -> None:
    """Stop the parallel launcher's worker processes once the sweep's jobs have returned.

    joblib keeps them for reuse and joins them at interpreter exit, where each TensorFlow
    process takes ~2 s to tear down: 2 s of every parallel sweep spent waiting on idle
    processes. Nothing is running in them now (every job returned), so they are killed.
    """
    if QUEUE is not None:  # src.chapter: another sweep follows and reuses them
        return
    executor = live_workers()
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def live_workers():
    """joblib's one reusable executor (no public accessor) while its workers are up, else None."""
    loky = sys.modules.get("joblib.externals.loky.reusable_executor")  # imported only by the parallel launcher
    executor = getattr(loky, "_executor", None)
    return None if executor is None or executor._flags.shutdown or executor._flags.broken else executor


def job_config(hydra_context, config, job: list[str]) -> dict:
    """Compose one job's config as its process will, and validate it."""
    try:
        cfg = hydra_context.config_loader.load_sweep_config(config, job)
        with open_dict(cfg):
            del cfg["hydra"]
        return validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"job ({' '.join(job)}): {error}; nothing was trained") from None


def record_jobs(sweep_dir: Path, parent: "ParentRun", jobs: list[list[str]], swept: set[str],
                returns: list) -> Path:
    """<sweep dir>/jobs.json (the parent run logs it): each job's swept values and MLflow run.

    A skipped job's run is the one that finished earlier (under an earlier parent): this
    list is how the sweep's results are found whichever sweep trained them.
    """
    records = []
    for index, (job, job_return) in enumerate(zip(jobs, returns, strict=True)):
        values = dict(item.split("=", 1) for item in job)
        result = job_return.return_value if isinstance(job_return.return_value, dict) else {}
        records.append({"job": index, "params": {key: values[key] for key in values if key in swept},
                        "run_id": result.get("run_id"), "skipped": bool(result.get("skipped"))})
    return write_json(sweep_dir / JOBS_FILE, {"parent_run_id": parent.run_id, "jobs": records})


def job_error(job_return) -> BaseException:
    try:
        _ = job_return.return_value  # raises the job's exception
    except BaseException as error:  # noqa: BLE001 (collected, reported after the other jobs)
        return error
    return RuntimeError("job failed without an exception")


def report_failures(failures: list, n_jobs: int, parent: "ParentRun") -> None:
    if not failures:
        return
    failed = [(index, job, error) for index, job, error in failures if not isinstance(error, NotRun)]
    lines = [f"job {index} ({' '.join(job)}): {error}" for index, job, error in failed]
    stopped = len(failures) - len(failed)
    tail = f"; {stopped} not run (hydra.sweeper.fail_fast=true stops at the first failure)" if stopped else ""
    parent.end("FAILED", "; ".join(lines) + tail)
    for _, _, error in failed:
        if not isinstance(error, LabError):
            raise error  # a bug, not a user problem: keep its traceback
    raise LabError(f"{len(failed)} of {n_jobs} jobs failed: " + " | ".join(lines) + tail)


# -- in a job's process (src.train), whichever launcher started it ---------------------------------

def stop_if_failed_before(hydra_config) -> None:
    """With hydra.sweeper.fail_fast=true, a job that starts after another failed refuses at once."""
    stop = Path(hydra_config.sweep.dir) / STOP_FILE
    if hydra_config.sweeper.get("fail_fast") and stop.is_file():
        raise NotRun(f"not run: {stop.read_text().strip()} failed first (hydra.sweeper.fail_fast=true)")


def job_failed(hydra_config, error: BaseException) -> None:
    """As a job fails: one line on stderr at once (the sweep's report waits for every job), and with
    fail_fast the note that stops the jobs not yet started."""
    from src.cli import error_line  # noqa: PLC0415

    if isinstance(error, NotRun):
        return
    fail_fast = bool(hydra_config.sweeper.get("fail_fast"))
    job = f"job {hydra_config.job.num}"
    print(f"{job} failed ({' '.join(hydra_config.overrides.task)}): {error_line(error)}; "
          + ("the jobs not yet started will not run (hydra.sweeper.fail_fast=true)" if fail_fast
             else "the other jobs go on (hydra.sweeper.fail_fast=true stops at the first failure)"),
          file=sys.stderr, flush=True)
    if fail_fast:
        (Path(hydra_config.sweep.dir) / STOP_FILE).write_text(f"{job}\n")


class ParentRun:
    """The sweep's MLflow parent run, created in the launching process before any job."""

    def __init__(self, configs: list[dict], sweep_dir: Path, arguments: list[str]):
        from src import tracking  # noqa: PLC0415 (MLflow only when a sweep really runs)

        config = configs[0]
        self.client = tracking.connect(config["tracking"])  # creates the schema before parallel jobs race
        experiment_id = tracking.ensure_experiment(self.client, config["name"], config["tracking"])
        tracking.close_orphans(self.client, experiment_id)
        tags = {f"{tracking.TAG}sweep_dir": str(sweep_dir), f"{tracking.TAG}overrides": " ".join(arguments),
                f"{tracking.TAG}jobs": str(len(configs)), tracking.PROCESS_TAG: tracking.process_id(),
                **tracking.git_tags()}
        self.run_id = self.client.create_run(experiment_id, run_name=f"sweep {sweep_dir.name}", tags=tags).info.run_id
        self.experiment, self.sweep_dir = config["name"], sweep_dir
        (sweep_dir / PARENT_FILE).write_text(json.dumps({"run_id": self.run_id, "experiment_id": experiment_id}))
        self.ended = False
        for name, path in {(job["data"]["name"], job["data"]["path"]) for job in configs}:
            self.log_dataset(tracking, name, in_repo(path))

    def log_dataset(self, tracking, name: str, path: Path) -> None:
        """The dataset's row, made here before the jobs start: parallel jobs would race to insert it."""
        try:
            digest = json.loads(path.with_suffix(".json").read_text())["npz_sha256"][:20]
        except (OSError, ValueError, KeyError):
            return  # missing or corrupt: each job stops with the data error that says how to fix it
        tracking.log_dataset(self.client, self.run_id, name, path, digest, "training")

    def end(self, status: str, reason: str | None = None, tags: dict[str, str] | None = None,
            artifact: Path | None = None, jobs: list[dict] | None = None) -> None:
        """Close the parent run, with the seed aggregates of jobs (jobs.json's records) where given;
        a store that stopped answering is a TrackingError naming it."""
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        from src import tracking  # noqa: PLC0415

        if self.ended:
            return
        self.ended = True
        try:
            for key, value in (tags or {}).items():
                self.client.set_tag(self.run_id, key, value)
            if artifact is not None:
                self.client.log_artifact(self.run_id, str(artifact))
            if jobs:
                from src import aggregates  # noqa: PLC0415 (scipy: only when a sweep ends)

                aggregates.record(self.client, self.run_id, self.experiment, jobs, self.sweep_dir)
            tracking.end_run(self.client, self.run_id, status, reason)
        except (MlflowException, OSError) as lost:
            # the jobs' own errors are in the log; what matters now is the store
            raise tracking.store_lost(self.client.tracking_uri, lost, f"the sweep's parent run {self.run_id}") from None

    def stopped_by(self, error: BaseException) -> None:
        """End the parent for an exception that stopped the sweep: KILLED for Ctrl-C/SIGTERM, else FAILED."""
        self.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED", repr(error))


def parent_run_id(sweep_dir: str | Path) -> str | None:
    """The parent run of the sweep a job belongs to (None outside a validating sweep)."""
    path = Path(sweep_dir) / PARENT_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None

