"""The fault tests' way to run the training command in the background and wait on what it writes."""

import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO


def start(args, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """`python -m src.train ARGS` in the background; piped streams are text."""
    return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=REPO, env=env, stdout=stdout,
                            stderr=stderr, text=True)


def wait_for(condition, job: subprocess.Popen, what: str, timeout_s: float = 300, poll_s: float = 0.01) -> None:
    """Poll condition() until true; fail if the job ends first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert job.poll() is None or condition(), f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s:.0f} s"
        time.sleep(poll_s)


def start_past_epoch_1(args, env, state: Path) -> subprocess.Popen:
    """The training command with stderr piped, returned once its first epoch is saved under state (state_dir)."""
    job = start(args, env, stderr=subprocess.PIPE)
    wait_for(lambda: any(state.glob("*/epoch_0001")), job, "epoch 1")
    return job
