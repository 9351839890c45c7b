"""Several experiments' sweeps one after another in one process, on the same warm workers.

    python -m src.chapter                                 # every experiment of params.yaml
    python -m src.chapter seed_notebook batchnorm         # these experiments
    python -m src.chapter batchnorm "optimizers seed=42" -- epochs=1
                                                          # per-experiment overrides; after --: for all

Each experiment runs as `python -m src.train -m experiment=<name> <launch> <overrides>` would
(params.yaml's experiments.launch: the parallel launcher, one thread a job): its own sweep
folder, MLflow parent run, children and jobs.json, and a finished config is skipped. What
differs is the process. `dvc repro` starts one per experiment stage, and each start costs
seconds before and after the jobs (reports/benchmarks.md): Python, Hydra and MLflow in the sweep's
process, then two worker processes importing TensorFlow and loading the data. Here the
parallel launcher's workers stay up from one sweep to the next (joblib reuses them), so
those costs are paid once for the whole chapter; the numbers are the same. And the sweeps
overlap: each returns once its jobs are queued, and the next sweep's jobs queue behind them,
so a worker done with one experiment's last tasks starts on the next experiment while the
other worker finishes (run_sweeps).
The first failing sweep stops the run, with its error and exit code, as dvc repro would.
"""

import shlex
import sys
from collections import deque
from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins

Plugins.instance()  # Hydra's plugin scan re-runs the modules it finds: before src.sweep is imported, as in src.train

from src import sweep, train  # noqa: E402
from src.cli import INTERRUPTED_EXIT, error_line, run_main  # noqa: E402
from src.errors import ConfigError  # noqa: E402
from src.params import block, load_params  # noqa: E402
from src.paths import REPO  # noqa: E402


def sweeps(arguments: list[str]) -> list[list[str]]:
    """The overrides of each sweep: '<name> [override ...]' per argument, then after -- what all of them get."""
    settings = block(load_params(REPO / "params.yaml"), "experiments")
    common = arguments[arguments.index("--") + 1:] if "--" in arguments else []
    chosen = arguments[:arguments.index("--")] if "--" in arguments else arguments
    launch = shlex.split(settings["launch"]) + shlex.split(settings["extra"] or "")
    specs = [shlex.split(item) for item in chosen] or [[name] for name in settings["datasets"]]
    unknown = [spec[0] for spec in specs if not (REPO / "conf" / "experiment" / f"{spec[0]}.yaml").is_file()]
    if unknown:  # checked before the first sweep trains, not when the run reaches the name
        known = ", ".join(sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml")))
        raise ConfigError(f"no experiment {', '.join(unknown)} in conf/experiment/; choose from {known}")
    return [[f"experiment={name}", *launch, *overrides, *common] for name, *overrides in specs]


class Sweep(NamedTuple):
    argv: list[str]  # src.train's arguments
    heading: str  # printed as it is queued
    then: Callable[[], None] = lambda: None  # once it has concluded


def run(all_overrides: list[list[str]]) -> None:
    """`python -m src.train -m <overrides>` for each item, in this process; stops at the first failure."""
    run_sweeps([Sweep(["-m", *overrides], f"== {' '.join(overrides)}") for overrides in all_overrides])


def run_sweeps(sweeps: list[Sweep]) -> None:
    """Each sweep in turn on one set of workers: its jobs queue behind those of the sweep before it,
    and its then() runs once it has concluded, in order.

    At most two sweeps are in flight: the next one is queued once the one before the last has
    concluded. A sweep that fails stops the run, but a sweep already queued behind it still runs to
    its end and is concluded (its runs are not lost); then the first failure ends the run.
    """
    with shared_workers():
        waiting: deque[tuple[sweep.QueuedSweep | None, Callable[[], None]]] = deque()
        try:
            for argv, heading, then in sweeps:
                print(heading, flush=True)
                train_here(argv)  # returns once its jobs are queued; a refused sweep exits here (status 2)
                waiting.append((sweep.QUEUE.pop() if sweep.QUEUE else None, then))
                while len(waiting) > 1:
                    conclude(*waiting.popleft())
            while waiting:
                conclude(*waiting.popleft())
        except BaseException as error:
            wind_down(waiting, error)
            raise


def conclude(queued: "sweep.QueuedSweep | None", then: Callable[[], None]) -> None:
    if queued is not None:
        queued.finish()
    then()


def wind_down(waiting: deque, error: BaseException) -> None:
    """After a failure: the sweeps still queued run to their end and are concluded (interrupted: marked
    KILLED at once, as their jobs are); their own failures are printed, the first one ends the run."""
    while waiting:
        queued, then = waiting.popleft()
        if queued is None:
            continue
        if isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit) and error.code == INTERRUPTED_EXIT):
            queued.stop(KeyboardInterrupt())
            continue
        try:
            conclude(queued, then)
        except Exception as other:  # noqa: BLE001 (reported; the first failure is the one raised)
            print(f"error: {error_line(other)}", file=sys.stderr)


@contextmanager
def shared_workers():
    """Sweeps run inside this block leave the parallel launcher's workers up for the next one, and
    return once their jobs are queued (sweep.QUEUE)."""
    sweep.QUEUE = []
    try:
        yield
    finally:
        sweep.QUEUE = None
    sweep.release_workers()  # only after success: interrupted workers are still closing their runs


def train_here(argv: list[str]) -> None:
    """`python -m src.train <argv>`, in this process."""
    GlobalHydra.instance().clear()  # Hydra is set up once per command line
    sys.argv = [sys.argv[0], *argv]
    train.cli()


if __name__ == "__main__":
    run_main(lambda arguments: run(sweeps(arguments)))
