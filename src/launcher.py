"""The parallel launcher (hydra/launcher=parallel): joblib's, with jobs of one graph sent to one worker.

A worker process keeps the compiled model of every graph it has trained (src/compiled.py),
so the second job of a graph skips the tracing the first one paid. joblib hands each job to
whichever worker is free, so the three seeds of an arm used to land on both workers, and each
traced it. Here a task is a run of jobs whose overrides differ only in values that leave the
graph alone (the seed, the initializer, the learning rate), done one after another in one
worker. Groups are split when there are too few tasks to keep every worker busy, and the
largest tasks go first; the results come back in the jobs' order, as from joblib's launcher.
Every task is queued at once (submit), so a sweep that src.chapter starts next queues its
tasks behind these, and the workers go from one sweep to the next without waiting.

The workers start as soon as the sweep has validated its jobs (start_workers), before it opens
its MLflow parent run: their imports (TensorFlow, Keras, MLflow: seconds) overlap that work
instead of following it. What TensorFlow prints as it loads is held back in each worker until
its first task: a sweep refused by its store meanwhile prints its one error line and nothing else.
"""

import contextlib
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, setup_globals

from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher

# joblib (0.4 s to import) only when a sweep launches: Hydra imports this module for every
# command, --help included.

log = logging.getLogger(__name__)

# Overrides whose values only change initial values or a variable: jobs that differ in them alone
# can share a compiled model (a per-step schedule bakes the rate in; then they just take turns).
VALUE_ONLY = {"seed", "model.kernel_initializer", "optimizer.learning_rate"}
# loky takes a worker whose memory grew by 300 MB since its first task for a leaking one and
# replaces it. Ours grow by design -- the dataset a job loads, the compiled models kept for the
# next job (src/compiled.py, at most 16) -- and a replaced worker throws both away and imports
# TensorFlow again: after most tasks, with loky's bound. A worker is replaced past this one.
WORKER_GROWTH = 4 * 2**30


class GroupingLauncher(JoblibLauncher):
    warming: threading.Thread | None = None

    def start_workers(self) -> None:
        """Start the workers and their imports in the background (the sweep calls it once its jobs are valid).
        Workers already up (src.chapter) are warm, and may be busy with the sweep before: left alone."""
        from src.sweep import live_workers  # noqa: PLC0415 (src.sweep imports the config rules)

        if live_workers() is not None:
            return
        settings = self.settings()
        self.warming = threading.Thread(target=warm_up, args=(settings, int(settings.get("n_jobs") or 1)), daemon=True)
        self.warming.start()

    def settings(self) -> dict:
        from hydra_plugins.hydra_joblib_launcher import _core  # noqa: PLC0415 (joblib)

        settings = {**self.joblib, "backend": "loky"}
        _core.process_joblib_cfg(settings)
        settings.pop("pre_dispatch", None)  # every task queued at once (submit)
        return settings

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        return self.submit(job_overrides, initial_job_idx)()

    def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Callable[[], list[JobReturn]]:
        """Queue the jobs on the workers and return at once; calling the result waits for their returns,
        in the jobs' order. Every task is queued now, so the tasks of a sweep queued after this one
        (src.chapter) start only as the workers run out of this one's."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        settings = self.settings()
        if self.warming is not None:
            self.warming.join()  # the same pool of workers: joblib reuses them
        tasks = graph_tasks([list(job) for job in job_overrides], workers=int(settings.get("n_jobs") or 1))
        log.info("launching %d jobs as %d tasks of one graph each on %s workers", len(job_overrides), len(tasks),
                 settings.get("n_jobs"))
        from joblib import Parallel, delayed  # noqa: PLC0415

        state = Singleton.get_state()
        running = Parallel(**settings, pre_dispatch="all", return_as="generator")(
            delayed(run_task)([(initial_job_idx + index, job_overrides[index]) for index in task],
                              self.hydra_context, self.config, self.task_function, state)
            for task in tasks)

        def returns() -> list[JobReturn]:
            done = {index: job_return for task, task_returns in zip(tasks, running, strict=True)
                    for index, job_return in zip(task, task_returns, strict=True)}
            return [done[index] for index in range(len(job_overrides))]
        return returns


def warm_up(settings: dict, workers: int) -> None:
    """Start the workers and have each import what a job imports (in a thread of the sweep's process)."""
    from joblib import Parallel, delayed  # noqa: PLC0415

    try:
        Parallel(**settings)(delayed(imports)() for _ in range(workers))
    except Exception as error:  # noqa: BLE001 (only a head start: the jobs import what they need)
        log.debug("warming the workers up failed: %s", error)


HELD_BACK: list[bytes] = []  # in a worker: what its imports printed, written out by its first task


def imports() -> None:
    """In a worker: TensorFlow, Keras and MLflow, by way of the modules a job runs, their start-up lines
    held back (the sweep can still be refused: then they never show)."""
    tolerate_growth()
    with held_back_output():
        import src.engine  # noqa: PLC0415
        import src.job  # noqa: F401, PLC0415


@contextlib.contextmanager
def held_back_output():
    """Catch what this process writes to stderr (TensorFlow's C++ start-up lines too: file descriptor 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            HELD_BACK.append(caught.read())


def release_held_back_output() -> None:
    """The sweep runs: what the worker's imports printed goes out now, as it would have without holding back."""
    while HELD_BACK:
        os.write(2, HELD_BACK.pop(0))


def run_task(jobs: list[tuple[int, Sequence[str]]], hydra_context, config, task_function, state) -> list[JobReturn]:
    """One worker's task: its jobs one after another (a failed job is a FAILED return; the rest go on)."""
    from hydra_plugins.hydra_joblib_launcher import _core  # noqa: PLC0415

    tolerate_growth()
    release_held_back_output()
    return [_core.execute_job(index, overrides, hydra_context, config, task_function, state)
            for index, overrides in jobs]


def tolerate_growth() -> None:
    """In a worker: loky's leak bound raised to WORKER_GROWTH (the worker loop reads it after each task)."""
    from joblib.externals.loky import process_executor  # noqa: PLC0415

    process_executor._MAX_MEMORY_LEAK_SIZE = max(process_executor._MAX_MEMORY_LEAK_SIZE, WORKER_GROWTH)


def graph_tasks(jobs: list[list[str]], workers: int) -> list[list[int]]:
    """The jobs' indices in tasks: those of one graph together, at least two tasks a worker where
    there are enough jobs (groups split evenly), largest first."""
    groups: dict[tuple, list[int]] = {}
    for index, overrides in enumerate(jobs):
        key = tuple(item for item in overrides if item.split("=", 1)[0].lstrip("+~") not in VALUE_ONLY)
        groups.setdefault(key, []).append(index)
    largest = max(1, math.ceil(len(jobs) / (2 * workers)))
    tasks = []
    for group in groups.values():
        parts = math.ceil(len(group) / largest)
        bounds = [round(part * len(group) / parts) for part in range(parts + 1)]
        tasks += [group[start:end] for start, end in zip(bounds, bounds[1:], strict=False)]
    return sorted(tasks, key=len, reverse=True)
