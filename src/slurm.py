"""Sweeps as Slurm jobs (`hydra/launcher=slurm`): hydra-submitit-launcher's SlurmLauncher, plus
what a lab's cluster asks of it.

In the launching process (launch, hydra_plugins/ch11_slurm's SlurmLauncher):
- Job states come from `sacct` where the cluster keeps accounting, else from `squeue`: without
  slurmdbd `sacct` answers "accounting storage is disabled", and submitit would wait for ever
  on a job cancelled before it wrote a result.
- A job that ends without a result (scancel, a node failure, the memory or time limit) is one
  failed job of the sweep, named with its Slurm state and log; the other jobs go on, and the
  same command resumes it from its last finished epoch.

In the job (src.train calls stop_on_preemption): the run carries its Slurm job id
(tracking.owner_tags), and a preemption, SIGTERM or submitit's SIGUSR2 before the time limit,
stops training like Ctrl-C (run KILLED, resume state kept); then the job is requeued and the
requeued job resumes the run from its last finished epoch.
"""

import functools
import logging
import os
import signal
import subprocess
from typing import NoReturn

from hydra.core.utils import JobReturn, JobStatus

from src import interrupts
from src.errors import LabError

log = logging.getLogger(__name__)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)  # Slurm's preemption; submitit's, before the time limit


class Preempted(KeyboardInterrupt):
    """Raised in training by a preemption signal: the run ends KILLED with its resume state kept."""


class SlurmJobLost(LabError):
    """A Slurm job that ended without a result."""


def launch(plugin_launch, job_overrides, initial_job_idx) -> list[JobReturn]:
    """The plugin's launch, with submitit's job states read from squeue without accounting, and every job's
    result read, so that a job that ended without one is a failed job of the sweep, not its end."""
    import submitit  # noqa: PLC0415 (as the plugin does: Hydra's plugin scan stays fast)

    submitit.SlurmExecutor.job_class.watcher = job_states()
    # The plugin's launch() submits the jobs, then reads their results in turn, so that the first job that
    # ended without one stops the sweep. Its submission is kept; the results are read here, job by job.
    submitted = []
    original_map_array = submitit.AutoExecutor.map_array

    def map_array(executor, *arguments):
        submitted.extend(original_map_array(executor, *arguments))
        return []

    submitit.AutoExecutor.map_array = map_array
    try:
        plugin_launch(job_overrides, initial_job_idx)
    finally:
        submitit.AutoExecutor.map_array = original_map_array
    return [result(job, overrides) for job, overrides in zip(submitted, job_overrides, strict=True)]


def result(job, overrides) -> JobReturn:
    """The job's JobReturn, or for a job that ended without one a FAILED JobReturn that says why."""
    from submitit.core.utils import UncompletedJobError  # noqa: PLC0415

    try:
        return job.results()[0]
    except UncompletedJobError:
        lost = JobReturn(overrides=list(overrides), status=JobStatus.FAILED)
        lost.return_value = SlurmJobLost(
            f"Slurm job {job.job_id} ended {job.state.split()[0]} without a result (scancel, a node failure, "
            f"the time or memory limit: see {job.paths.stderr}); run the same command: it resumes the job "
            "from its last finished epoch")
        return lost


@functools.cache
def job_states():
    """submitit's job-state watcher, on squeue where the cluster keeps no accounting (no sacct)."""
    from submitit.slurm.slurm import SlurmInfoWatcher  # noqa: PLC0415

    class QueueWatcher(SlurmInfoWatcher):
        """squeue knows a job until MinJobAge (300 s by default) after it ended: polled within 30 s."""

        def _make_command(self) -> list[str] | None:
            command = super()._make_command()
            if command is None:
                return None
            jobs = ",".join(command[index + 1] for index, word in enumerate(command) if word == "-j")
            return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%N", f"--jobs={jobs}"]

        def read_info(self, string: bytes | str) -> dict:
            text = string.decode() if isinstance(string, bytes) else string
            return super().read_info("JobID|State|NodeList\n" + text)

    return SlurmInfoWatcher(delay_s=30) if keeps_accounting() else QueueWatcher(delay_s=30)


def keeps_accounting() -> bool:
    shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
    return "accounting_storage/none" not in shown


# -- in the job's process ------------------------------------------------------------------------

def current_job() -> str | None:
    """The Slurm job this process runs in (an array's task as <array job>_<task>), if any."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID")


def job_id() -> str | None:
    """This process's Slurm job, when it runs as a job of hydra/launcher=slurm (submitit's)."""
    return current_job() if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else None


def stop_on_preemption() -> None:
    """SIGTERM and SIGUSR2 raise Preempted in training (once: the requeue signals the job again), never
    inside a store call (src/interrupts.py)."""
    def preempted(signum: int) -> NoReturn:
        for each in PREEMPTION_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise Preempted(f"preempted by Slurm ({signal.Signals(signum).name}, job {job_id()}): the requeued job, or "
                        "the same command, resumes it from its last finished epoch")

    interrupts.install(preempted, PREEMPTION_SIGNALS)


def requeue(job: str, limit: int | None) -> None:
    """Put the job back in the queue, unless it was cancelled (a finished job can be requeued too) or was
    requeued limit times already (hydra.launcher.max_num_timeout): then its sweep reports it, and the same
    command resumes it."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if limit is not None and restarts >= limit:
        log.warning("Slurm job %s not requeued: it was requeued %d times (hydra.launcher.max_num_timeout=%d)",
                    job, restarts, limit)
        return
    state = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%T", f"--jobs={job}"],
                           capture_output=True, text=True, timeout=60).stdout.split()
    if state[:1] != ["RUNNING"]:
        log.warning("Slurm job %s is %s: not requeued", job, state[0] if state else "gone")
        return
    done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode:
        log.warning("Slurm job %s not requeued (%s): the same sweep command resumes its run", job, done.stderr.strip())
    else:
        log.warning("Slurm job %s requeued after preemption: its run resumes from its last finished epoch", job)
