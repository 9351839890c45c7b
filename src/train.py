"""Train any chapter-11 configuration and record it in MLflow: the command line.

    python -m src.train                                 # conf/config.yaml as it stands
    python -m src.train optimizer=nadam model.depth=5   # any value, any group option
    python -m src.train -m optimizer=adam,nadam         # a sweep: parent run + one child per job
    python -m src.train --help | --cfg job              # the groups and the resolved config

main() is Hydra's entry point; the job itself (validate, skip or resume, fit, record) is
src.job.train(cfg), imported only when a job runs, so --help answers at once without
TensorFlow or MLflow. Every user mistake, Hydra's included, is one line and exit code 2.
"""

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from src import interrupts, pruning, slurm
from src.cli import USER_ERROR_EXIT, error_line, one_line_errors
from src.config import validate
from src.errors import LabError
from src.paths import REPO

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before it loads
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a transfer job loads its source model


# An absolute config path: Hydra resolves a relative one against the calling module's package
# when this file is imported (src.chapter runs it in-process) rather than run as a script.
@hydra.main(version_base="1.3", config_path=str(REPO / "conf"), config_name="config")
def main(cfg: DictConfig) -> dict:
    # Imported here, not above: Hydra's plugin scan, before main runs, imports its core plugins afresh, and a
    # sweeper module imported earlier would subclass the BasicSweeper it replaces.
    from src import sweep  # noqa: PLC0415

    hydra_config = HydraConfig.get()
    in_sweep = hydra_config.mode == RunMode.MULTIRUN
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # a parallel launcher's worker (not cli())
        interrupts.install(signals=(signal.SIGINT,))  # Ctrl-C reaches it too: never inside a store call
    if slurm_job := slurm.job_id():
        slurm.stop_on_preemption()
    try:
        if in_sweep:
            sweep.stop_if_failed_before(hydra_config)
        config = validate(cfg)  # a config mistake is one line at once, before TensorFlow and MLflow load
        from src.job import run_job  # noqa: PLC0415 (TensorFlow and MLflow: only when a job runs)

        parent = sweep.parent_run_id(hydra_config.sweep.dir) if in_sweep else None
        trial = pruning.trial_of(hydra_config.sweep.dir, hydra_config.job.num, parent) if in_sweep else None
        return run_job(config, Path(hydra_config.runtime.output_dir), parent, list(hydra_config.overrides.task),
                       trial=trial)
    except slurm.Preempted:  # the run is KILLED with its resume state: the requeued job resumes it
        slurm.requeue(slurm_job, hydra_config.launcher.get("max_num_timeout"))
        raise
    except Exception as error:
        if in_sweep:
            sweep.job_failed(hydra_config, error)  # one line now; the sweeper reports all once the others ran
            raise
        if not isinstance(error, LabError):
            raise  # a bug: its traceback
        print(f"error: {error_line(error)}", file=sys.stderr)  # before Hydra adds its own report
        sys.exit(USER_ERROR_EXIT)


def cli() -> None:
    """main() with every user mistake, Hydra's included, as one line and exit code 2."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises (to the lines below) instead of its own report
    with one_line_errors((LabError, HydraException, OmegaConfBaseException), describe=error_line,
                         stop_signals=interrupts.STOP_SIGNALS,  # a cluster's preemption (SIGTERM) stops it as Ctrl-C
                         interrupted="interrupted; the run is marked KILLED and the same command resumes it "
                                     "from its last finished epoch",
                         disk_fix="free space (or point state_dir and hydra.run.dir elsewhere) and run the same "
                                  "command: it resumes from its last finished epoch"):
        main()


if __name__ == "__main__":
    cli()
