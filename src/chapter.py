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
those costs are paid once for the whole chapter; the numbers are the same.
The first failing sweep stops the run, with its error and exit code, as dvc repro would.
"""

import shlex
import sys
from contextlib import contextmanager

from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins

Plugins.instance()  # Hydra's plugin scan re-runs the modules it finds: before src.sweep is imported, as in src.train

from src import sweep, train  # noqa: E402
from src.cli import run_main  # noqa: E402
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


def run(all_overrides: list[list[str]]) -> None:
    """`python -m src.train -m <overrides>` for each item, in this process; stops at the first failure."""
    with shared_workers():
        for overrides in all_overrides:
            print(f"== {' '.join(overrides)}", file=sys.stderr, flush=True)
            train_here(["-m", *overrides])  # a failure exits here (status 2), after the other jobs of its sweep ran


@contextmanager
def shared_workers():
    """Sweeps run inside this block leave the parallel launcher's workers up for the next one."""
    sweep.REUSE_WORKERS = True
    try:
        yield
    finally:
        sweep.REUSE_WORKERS = False
    sweep.release_workers()  # only after success: interrupted workers are still closing their runs


def train_here(argv: list[str]) -> None:
    """`python -m src.train <argv>`, in this process."""
    GlobalHydra.instance().clear()  # Hydra is set up once per command line
    sys.argv = [sys.argv[0], *argv]
    train.cli()


if __name__ == "__main__":
    run_main(lambda arguments: run(sweeps(arguments)))
