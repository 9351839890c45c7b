"""A real single-node Slurm cluster on this host, for the cluster tests: munged, slurmctld and
slurmd, each with its own config, state, spool, socket and log in a temporary folder, on free
loopback ports, stopped by pid afterwards (nothing of the host's own Slurm or munge is used).

Debian's packages (`apt-get install slurm-wlm munge`, done by `make system`): Slurm 22.05.
The daemons run as root, as a test machine's root; the node is this host, with its CPUs and
memory as Slurm sees them (`slurmd -C`). Without accounting (no slurmdbd), `sacct` has no job
history: the launcher reads job states from squeue and scontrol instead (src/slurm.py).

    with slurm_cluster() as cluster:        # cluster.env: SLURM_CONF for sbatch, squeue, ...
        subprocess.run(["sinfo"], env=cluster.env)
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from conftest import unavailable
from services import free_port, stop, wait_for

DAEMONS = ("munged", "slurmctld", "slurmd")


def require_slurm() -> None:
    """Skip without Slurm's packages, or fail under CI, which must run the cluster tests."""
    missing = [name for name in (*DAEMONS, "sbatch", "scontrol") if not shutil.which(name)
               and not Path("/usr/sbin", name).exists()]
    if missing or os.geteuid() != 0:
        unavailable(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge "
                    "(make system does)" if missing else "the Slurm cluster tests run as root (its daemons' user)")


@dataclass
class Cluster:
    root: Path
    node: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command (sbatch, squeue, scontrol, scancel, sinfo) against this cluster."""
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self, *job: str) -> list[dict[str, str]]:
        """The job given, or every job the controller knows (queued, running, and ended within MinJobAge)."""
        shown = self.run("scontrol", "-o", "show", "job", *job, check=False).stdout
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in shown.splitlines() if "JobId=" in line]

    def set_node(self, state: str, reason: str = "test") -> None:
        """scontrol update of this cluster's node: DRAIN or RESUME."""
        self.run("scontrol", "update", f"NodeName={self.node}", f"State={state}",
                 *((f"Reason={reason}",) if state.upper() != "RESUME" else ()))

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-N", "-o", "%T").stdout.strip()


def slurm_config(root: Path, node: str, cpus: int, memory_mb: int, ports: tuple[int, int]) -> str:
    return "\n".join([
        "ClusterName=ch11test", f"SlurmctldHost={node}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={ports[0]}", f"SlurmdPort={ports[1]}",
        "AuthType=auth/munge", "CredType=cred/munge",  # cred_expire: a requeued job's wait (120 s by default)
        f"AuthInfo=socket={root / 'munge.socket'},cred_expire=10",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}", f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
        "SchedulerType=sched/backfill", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2", "JobRequeue=1", "MinJobAge=300", "KillWait=5", "SlurmctldTimeout=30",
        "SlurmdTimeout=30", "SchedulerParameters=sched_interval=1", "MessageTimeout=20",
        f"NodeName={node} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


@contextlib.contextmanager
def slurm_cluster(cpus: int | None = None):
    """Start munged, slurmctld and slurmd on this host; yield the Cluster; stop them by pid."""
    require_slurm()
    root = Path(tempfile.mkdtemp(prefix="ch11-slurm-"))
    node = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 * 9 // 10
    (root / "state").mkdir()
    (root / "spool").mkdir()
    munge = root / "munge"
    munge.mkdir(mode=0o700)
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    config = root / "slurm.conf"
    config.write_text(slurm_config(root, node, cpus, memory_mb, (free_port(), free_port())))
    env = {**os.environ, "SLURM_CONF": str(config)}
    for name in [key for key in env if key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
        if name != "SLURM_CONF":
            del env[name]  # a test run from inside a Slurm job must not aim at that job's cluster
    cluster = Cluster(root, node, env)
    log = (root / "daemons.log").open("ab")
    try:
        cluster.processes["munged"] = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={root / 'munge.socket'}",
             f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
             f"--seed-file={munge / 'munged.seed'}"], stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: (root / "munge.socket").exists(), "munged", cluster.processes["munged"], 30)
        for daemon in ("slurmctld", "slurmd"):  # -D: in the foreground, so that its pid is ours to stop
            cluster.processes[daemon] = subprocess.Popen(
                [daemon, "-D", "-f", str(config), *(("-i",) if daemon == "slurmctld" else ())],
                env=env, stdout=log, stderr=log, start_new_session=True)
        wait_for(lambda: cluster.node_state() in {"idle", "mixed", "allocated"}, "the Slurm node",
                 cluster.processes["slurmd"], 60)
        yield cluster
    finally:
        cluster.run("scancel", "--user=root", check=False)  # the jobs first, while slurmd can still end them
        for name in reversed(list(cluster.processes)):
            stop(cluster.processes[name], signal.SIGTERM)
        kill_left_over(config)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def kill_left_over(config: Path) -> None:
    """SIGKILL what outlived the daemons: job steps (slurmstepd) and their tasks carry our SLURM_CONF."""
    marker = f"SLURM_CONF={config}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError):
            if marker in environ.read_bytes().split(b"\0") and int(environ.parent.name) != os.getpid():
                os.kill(int(environ.parent.name), signal.SIGKILL)
