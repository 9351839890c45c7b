"""hydra/launcher=slurm: hydra-submitit-launcher's Slurm launcher, with the work in src/slurm.py.

A package of its own: the experiment stages depend on hydra_plugins/ch11_sweeper only.
"""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from src import slurm


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    """Each job a Slurm job; job states read without Slurm accounting too, and a job that ended without a
    result (scancel, a node failure) one failed job of the sweep (see src.slurm)."""

    def launch(self, job_overrides, initial_job_idx):
        return slurm.launch(super().launch, job_overrides, initial_job_idx)
