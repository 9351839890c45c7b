"""`dvc repro`, with every stale sweep stage run in this one process, on one set of workers.

    python -m src.repro                  # what `make run` runs: the whole pipeline
    python -m src.repro report           # targets, as dvc repro takes them

`dvc repro` starts a process per stage. For the experiment stages (a Hydra sweep, then its
summary) each start costs seconds -- Python, Hydra and MLflow, then two worker
processes importing TensorFlow and loading the data -- and the workers' compiled models
(src/compiled.py) die with them, so every stage traces its graphs again. Here:

1. `dvc repro` of the stages the sweeps depend on (download, prepare, the pretrained base);
2. every stale sweep stage, as DVC decides staleness (`dvc status`): its own command, read
   from DVC (dvc.yaml resolved with params.yaml), run in this process as src.chapter runs a
   sweep -- the parallel launcher's workers stay up from one stage to the next -- then its
   summary, then the stage recorded in dvc.lock (`dvc commit`), as dvc repro records it;
3. `dvc repro` of the rest (the report, the learning-rate finder).

Each experiment keeps its own stage, so its own staleness: editing one experiment file
re-runs that experiment alone, here as under plain `dvc repro`, which stays a valid way to run
the pipeline. The numbers are the same either way; only the processes differ. A stage whose
command is not `python -m src.train -m ... && python -m src.report.summary ...` is left to step
3, and the first failing stage stops the run with its error, as dvc repro stops.
"""

import os
import shlex
import subprocess
import sys

import networkx  # DVC's own graph library
from dvc.exceptions import DvcException
from dvc.repo import Repo

from src.chapter import Sweep, run_sweeps
from src.cli import run_main
from src.errors import ConfigError
from src.paths import REPO
from src.report import summary

TRAIN = ["python", "-m", "src.train", "-m"]
SUMMARY = ["python", "-m", "src.report.summary"]
SHELL = set(";|<>$`\\(){}")  # a command using these means more than the two commands parsed here


def sweep_commands(command) -> tuple[list[str], list[str]] | None:
    """(the sweep's src.train arguments, the summary's arguments) of a sweep stage's command;
    None for any other command."""
    if not isinstance(command, str) or SHELL & set(command):
        return None
    parts = [shlex.split(part) for part in command.split("&&")]
    if len(parts) != 2 or parts[0][:4] != TRAIN or parts[1][:3] != SUMMARY:
        return None
    return parts[0][3:], parts[1][3:]


def main(targets: list[str]) -> None:
    if any(target.startswith("-") for target in targets):
        if set(targets) & {"-h", "--help"}:
            print(__doc__)
            return
        raise ConfigError(f"python -m src.repro takes stage names only, not {targets[0]}; for dvc repro's "
                          "options run dvc repro itself")
    os.chdir(REPO)  # stage commands run at the repository root
    try:
        repo = Repo(str(REPO))
        stages = chosen_stages(repo, targets)
    except DvcException as error:
        raise ConfigError(f"dvc cannot read the pipeline: {' '.join(str(error).split())}; "
                          "check the targets and dvc.yaml (dvc repro --dry shows the stages)") from None
    sweeps = [stage.addressing for stage in stages if sweep_commands(stage.cmd)]
    needed = {upstream.addressing for stage in stages if stage.addressing in sweeps
              for upstream in dependencies(repo, stage)}
    upstream = [stage.addressing for stage in stages if stage.addressing in needed and stage.addressing not in sweeps]
    prepared = stale(upstream)
    if prepared:
        dvc("repro", *upstream)
    ran = stale(sweeps)
    run_sweeps([sweep_stage(stage) for stage in stages if stage.addressing in ran])
    if stale([stage.addressing for stage in stages if stage.addressing not in sweeps]):
        dvc("repro", *targets)  # the rest (DVC's start-up, seconds, only where a stage needs it)
    elif not (prepared or ran):
        print("Data and pipelines are up to date.")


def stale(names: list[str]) -> set[str]:
    """Those of the named stages whose command, dependencies or outputs differ from dvc.lock's record:
    what dvc status lists (read from a fresh look at the repository: another command may have run)."""
    if not names:
        return set()
    repo = Repo(str(REPO))
    with repo.lock:
        return {stage.addressing for stage in repo.index.stages if stage.addressing in names and stage.changed()}


def chosen_stages(repo, targets: list[str]) -> list:
    """The stages `dvc repro <targets>` would consider, in dvc.yaml's order."""
    if not targets:
        return list(repo.index.stages)
    chosen = {stage for target in targets for stage in repo.stage.collect(target, with_deps=True)}
    return [stage for stage in repo.index.stages if stage in chosen]


def dependencies(repo, stage) -> set:
    """Every stage whose outputs stage reads, directly or not."""
    return networkx.descendants(repo.index.graph, stage)


def sweep_stage(stage) -> Sweep:
    """The stage's sweep (its src.train arguments), then its summary and its dvc.lock entry."""
    train_arguments, summary_arguments = sweep_commands(stage.cmd)

    def record() -> None:
        summary.main(summary_arguments)
        Repo(str(REPO)).commit(stage.addressing, force=True)  # what dvc repro records after running the command
        print(f"Recorded '{stage.addressing}' in dvc.lock", flush=True)
    return Sweep(train_arguments, f"Running stage '{stage.addressing}' in the shared process:\n> {stage.cmd}", record)


def dvc(*arguments: str) -> None:
    """A DVC command on this environment's Python (the stages call `python`); its failure is ours."""
    path = f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"
    done = subprocess.run([sys.executable, "-m", "dvc", *arguments], env={**os.environ, "PATH": path})
    if done.returncode:
        sys.exit(done.returncode)


if __name__ == "__main__":
    run_main(main)
