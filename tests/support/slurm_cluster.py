"""A real single-node SLURM cluster on 127.0.0.1 for tests (Debian's slurm-wlm and munge).

One node with two fake GPUs declared as GRES, whose `File=` entries are character-device
nodes the cluster makes; no accounting database (job states are read with squeue/scontrol,
and finished jobs stay visible for `MinJobAge` seconds); every file of the cluster lives
under one folder.
Needs root (slurmd runs jobs as their user) and the Debian packages; `missing()` says why a
cluster cannot start here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
# srun inside a job step finds its config only at the compiled-in path (slurmstepd does not
# pass SLURM_CONF on): the cluster links its config there while it runs
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


def missing() -> str | None:
    """Why no cluster can start on this machine, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None
              and not Path("/usr/sbin", name).exists()]
    if absent:
        return f"SLURM is not installed ({', '.join(absent)} missing; apt-get install " \
               "slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a SLURM test cluster needs root (slurmd runs jobs as their owner)"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY}"
    if SYSTEM_CONF.exists() and not SYSTEM_CONF.is_symlink():
        return f"{SYSTEM_CONF} exists: this machine belongs to another SLURM cluster"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """Start with `start()`, stop with `stop()`; `env` is what clients need (SLURM_CONF)."""

    def __init__(self, root: Path, *, gpus: int = 2, cpus: int | None = None,
                 memory_mb: int = 256000, port: int = 16817) -> None:
        self.root = Path(root)
        self.gpus, self.cpus = gpus, cpus or os.cpu_count() or 1
        self.memory_mb, self.port = memory_mb, port
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._started_munge = False

    def _write_config(self) -> None:
        for sub in ("state", "spool", "log", "gres"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        devices = [self.root / "gres" / f"fakegpu{i}" for i in range(self.gpus)]
        for minor, device in enumerate(devices):
            if not device.exists():
                # character devices, as slurmd insists; (1, 3 + ...) are harmless memory
                # device numbers (null, zero, full...) that nothing opens
                os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3 + minor))
        r = self.root
        self.conf.write_text(f"""\
ClusterName=marseval-test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.port}
SlurmdPort={self.port + 1}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
MpiDefault=none
ReturnToService=2
# the node is declared with the CPUs and memory the profile asks for, not what the test
# machine has: jobs then schedule as on a real GPU node (memory is not a consumable here)
SlurmdParameters=config_overrides
MinJobAge=3600
SchedulerParameters=defer_batch
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} \
Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=test Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        (self.root / "gres.conf").write_text(
            f"NodeName={self.host} Name=gpu File={self.root}/gres/fakegpu[0-{self.gpus - 1}]\n")

    def _munge(self) -> None:
        probe = subprocess.run(["munge", "-n"], capture_output=True)
        if probe.returncode == 0:
            return  # a munged is already serving the default socket
        MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([_binary("munged"), "--force"], check=True, capture_output=True)
        self._started_munge = True

    def start(self, timeout: float = 60) -> SlurmCluster:
        self._write_config()
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.unlink(missing_ok=True)  # a link left by an earlier, killed test run
        SYSTEM_CONF.symlink_to(self.conf)
        self._munge()
        subprocess.run([_binary("slurmctld"), "-f", str(self.conf)], check=True, env=self.env)
        subprocess.run([_binary("slurmd"), "-f", str(self.conf)], check=True, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env,
                                   capture_output=True, text=True).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the test cluster did not come up (node state {state!r}); logs in "
                           f"{self.root / 'log'}")

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller still knows (MinJobAge keeps finished ones), as the
        key=value fields of `scontrol show job -o`."""
        shown = subprocess.run(["scontrol", "show", "job", "-o"], env=self.env,
                               capture_output=True, text=True, check=True).stdout
        jobs = []
        for line in shown.splitlines():
            if line.startswith("JobId="):
                fields = {}
                for token in line.split():
                    key, _, value = token.partition("=")
                    fields[key] = value
                jobs.append(fields)
        return jobs

    def stop(self) -> None:
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.root / pid_file
            if path.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(path.read_text().strip()), 15)
        if self._started_munge:
            subprocess.run(["pkill", "-x", "munged"], capture_output=True)
        if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == self.conf.resolve():
            SYSTEM_CONF.unlink()
