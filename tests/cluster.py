"""Real cluster runtimes the executor tests start and stop: a single-node Slurm and a Ray head node.

    with SlurmCluster() as slurm:      # munged, slurmctld and slurmd from Debian's slurm-wlm and munge
        os.environ["SLURM_CONF"] = str(slurm.conf)    # sbatch, squeue... now talk to it
    with RayHead(env={"PYTHONPATH": repo}) as head:   # `ray start --head`: its workers get `env`
        os.environ["RAY_ADDRESS"] = head.address

Both keep everything (keys, config, state, sockets, logs) in a fresh folder under /tmp, listen on free
loopback ports, and stop only the processes they started (Slurm's by their pid files, Ray's process
group). Slurm needs root and the Debian packages: `make cluster-deps` installs them (`make test` does
it first); `missing()` says what is absent, for a skip (or, in CI, a failure).
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

# Ray turns --node-ip-address=127.0.0.1 into the host's outward address (its nodes must reach each other);
# with clusters "disabled" (the single-machine mode it uses on macOS) every address stays on loopback,
# where test traffic belongs. The driver needs it too (the tests set it).
LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} not up after {timeout:.0f} s\n{tail}")
        time.sleep(0.1)


def stop_pid_files(pid_files: list[Path], timeout: float = 10) -> None:
    """SIGTERM the daemons in `pid_files` all at once (each takes 1-2 s to exit), SIGKILL those still
    there after `timeout`."""
    pids = [int(f.read_text().split()[0]) for f in pid_files if f.exists()]
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class SlurmCluster:
    """One node (this host, all its CPUs) in one partition, `debug`, the default."""

    @staticmethod
    def missing() -> str | None:
        absent = [p for p in SLURM_PROGRAMS if shutil.which(p) is None]
        if absent:
            return f"{', '.join(absent)} not installed (`make cluster-deps`: Debian's slurm-wlm and munge)"
        if os.geteuid() != 0:
            return "a single-node Slurm is started as root (SlurmUser=root)"
        return None

    def __enter__(self) -> "SlurmCluster":
        self.dir = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))  # short: socket paths max 107
        self.conf = self.dir / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        d = self.dir
        for sub in ("munge-key", "munge", "state", "spool", "log"):
            (d / sub).mkdir()
        (d / "munge-key").chmod(0o700)
        key = d / "munge-key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.socket = d / "munge" / "munge.socket"
        subprocess.run(["munged", "--force", f"--key-file={key}", f"--socket={self.socket}",
                        f"--pid-file={d / 'munge/munged.pid'}", f"--log-file={d / 'munge/munged.log'}",
                        f"--seed-file={d / 'munge/munged.seed'}"], check=True)
        wait_for(self.socket.exists, 10, "munged", d / "munge/munged.log")
        host = socket.gethostname().split(".")[0]
        # Facts from shared/REFERENCE-STACK.md (checked 2026-12-06): linuxproc and task/none need no
        # cgroups; no accounting (sacct is not used); an mpi/pmix error in slurmd's log is harmless.
        self.conf.write_text("\n".join([
            f"ClusterName=webtune{os.getpid()}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=1",  # pending array tasks tried every 1 s, not 60 s
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log/slurmctld.log'}",
            f"SlurmdLogFile={d / 'log/slurmd.log'}",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=4000 State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n")
        subprocess.run(["slurmctld"], env=self.env, check=True)
        subprocess.run(["slurmd"], env=self.env, check=True)
        wait_for(lambda: self.sinfo() == "idle", 30, "slurm node", d / "log/slurmd.log")

    def sinfo(self) -> str:
        return subprocess.run(["sinfo", "--noheader", "--format", "%T"], env=self.env,
                              capture_output=True, text=True).stdout.strip()

    def queue(self) -> str:
        """squeue's job ids, pending or running: '' when nothing is queued."""
        return subprocess.run(["squeue", "--noheader", "--format", "%i"], env=self.env,
                              capture_output=True, text=True, check=True).stdout.strip()

    def __exit__(self, *exc) -> None:
        stop_pid_files([self.dir / name for name in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid")])
        shutil.rmtree(self.dir, ignore_errors=True)


class RayHead:
    """`ray start --head --block` in its own process group: its address is `127.0.0.1:<port>`."""

    def __init__(self, cpus: int = 2, env: dict | None = None):
        self.cpus = cpus
        self.extra_env = env or {}

    def __enter__(self) -> "RayHead":
        self.dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: socket paths max 107
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        ray = Path(sys.executable).parent / "ray"
        log = self.dir / "ray-start.log"
        # Every port with a fixed default gets a free one: two test processes may each start a head.
        self.process = subprocess.Popen(
            [str(ray), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
             f"--num-cpus={self.cpus}", "--include-dashboard=false", f"--dashboard-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}",
             "--disable-usage-stats", f"--temp-dir={self.dir}"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **self.extra_env, **LOOPBACK_RAY, "RAY_USAGE_STATS_ENABLED": "0"})
        try:
            wait_for(lambda: "Ray runtime started" in log.read_text() or self.process.poll() is not None,
                     90, "ray head", log)
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited {self.process.returncode}\n{log.read_text()[-2000:]}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        # SIGKILL to the whole group (gcs_server, raylet, workers): SIGTERM makes it drain for 30 s.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
