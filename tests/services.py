"""Real services for the team-scale tests, on free loopback ports: PostgreSQL, an MLflow
tracking server in front of it, the MLflow UI. Each is a context manager that stops what it
started, whatever the test did.

PostgreSQL is Debian's (`apt-get install postgresql`, done by .ci/run). It refuses to run
as root, so as root its cluster belongs to the `postgres` user, in a folder that user owns.
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import unavailable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """The folder of Debian's PostgreSQL programs (the newest installed), or fail/skip saying how to get it."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if found:
        return found[-1].parent
    if shutil.which("initdb"):
        return Path(shutil.which("initdb")).parent
    unavailable("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")


def wait_for(ready, what: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} was not ready within {timeout_s:.0f} s")
        time.sleep(0.2)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a service and everything it started (it runs in its own process group)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@contextlib.contextmanager
def postgres(password: str | None = None):
    """A throwaway PostgreSQL cluster on 127.0.0.1; yields the SQLAlchemy URI of its `mlflow` database.

    With a password, connections over TCP must give it (SCRAM), and the URI carries it."""
    binaries = postgres_bin()
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="ch11-postgres-"))  # not under pytest's root-only tmp folders
    if as_owner:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    server = None
    try:
        auth = ["--auth=trust"]
        if password:
            (root / "password").write_text(password)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={root / 'password'}"]
        subprocess.run([*as_owner, binaries / "initdb", "-D", root / "data", "-U", "mlflow", *auth,
                        "--encoding=UTF8", "--no-sync"], check=True, capture_output=True)
        server = subprocess.Popen([*as_owner, binaries / "postgres", "-D", root / "data", "-h", "127.0.0.1",
                                   "-p", str(port), "-k", root, "-c", "fsync=off"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def accepts() -> bool:
            return subprocess.run([binaries / "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

        wait_for(accepts, "PostgreSQL", server)
        subprocess.run([binaries / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow"],
                       check=True, capture_output=True, env={**os.environ, "PGPASSWORD": password or ""})
        yield f"postgresql://mlflow{f':{password}' if password else ''}@127.0.0.1:{port}/mlflow"
    finally:
        if server is not None:
            stop(server, signal.SIGINT)  # PostgreSQL's fast shutdown
        shutil.rmtree(root, ignore_errors=True)


def healthy(uri: str) -> bool:
    from src.errors import TrackingError
    from src.tracking import probe_server  # what every job checks before it trains

    try:
        probe_server(uri, timeout_s=2)
    except TrackingError:
        return False
    return True


class MlflowServer:
    """`mlflow server` (or `mlflow ui`) as users start it; start() again after stop() on the same port."""

    def __init__(self, command: str, backend: str, artifacts: Path, log: Path, port: int | None = None):
        self.command, self.backend, self.artifacts, self.log = command, backend, artifacts, log
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> "MlflowServer":
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", self.command, "--backend-store-uri", self.backend,
                 "--artifacts-destination", self.artifacts.as_uri(),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: healthy(self.uri), f"mlflow {self.command} (log: {self.log})", self.process)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop(self.process, sig)

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
