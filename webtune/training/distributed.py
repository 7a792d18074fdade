"""Several training processes on one machine: data parallel (DDP) over the hf backend's TRL loop.

`train.hf.processes: N` (N > 1) makes the train stage start itself N times under torch's elastic
launcher (what `torchrun --standalone --nproc_per_node N` runs), one process per GPU, or per core group
on a CPU (gloo). The same command runs under `torchrun` or `accelerate launch` directly. The Trainer
(through accelerate) shares the work: each process reads every N-th micro-batch of the run's order, so a
step of N processes with `batch_size` rows each trains exactly the rows of a one-process step with N x
`batch_size` rows, and the gradients are averaged over the tokens of all of them.

Only the main process (rank 0) writes: the mask report, the checkpoint folder's state, the curves, the
adapter, the card and the metrics. The others wait where it writes (a broadcast of what they need).
"""

import logging
import os
import sys
from collections.abc import Sequence

from webtune.training import TrainError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


LOCK_HELD = "WEBTUNE_TRAIN_LOCK_HELD"  # set by launch(): the launching process holds the checkpoint lock
LAUNCHER_PID = "WEBTUNE_TRAIN_LAUNCHER"  # set by launch(): the process the training processes die with


def launched() -> bool:
    """Whether this process was started by a launcher (torchrun, accelerate launch, the stage itself)."""
    return "LOCAL_RANK" in os.environ


def takes_lock() -> bool:
    """Whether this process takes the checkpoint lock: a single process, or rank 0 of an outside launcher."""
    return is_main() and LOCK_HELD not in os.environ


def launch(processes: int, argv: Sequence[str]) -> None:
    """Run `python -m stages.train argv` in `processes` processes; raise TrainError if one fails.

    Each process reports its own error in one line (webtune.errors); this adds the launcher's one line
    instead of its traceback summary.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id="webtune-train",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          start_method="spawn")
    # the launcher logs each failure with its own file paths; the processes' lines and ours say it
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ[LOCK_HELD] = "1"  # the processes inherit both
    os.environ[LAUNCHER_PID] = str(os.getpid())
    try:
        elastic_launch(config, sys.executable)("-m", "stages.train", *argv)
    except ChildFailedError as error:
        failed = sorted(error.failures)
        raise TrainError(f"{len(failed)} of {processes} training processes stopped (ranks "
                         f"{', '.join(map(str, failed))}); the error is above") from None
    finally:
        del os.environ[LOCK_HELD], os.environ[LAUNCHER_PID]


def die_with_launcher() -> None:
    """A process launch() started must not outlive it: torch's launcher starts each in a session of its
    own, so a SIGKILL of `dvc repro` (and of the launcher with it) would leave them training and writing
    checkpoints, unlocked, next to the next run."""
    if LAUNCHER_PID not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: SIGKILL when the parent dies
    if os.getppid() != int(os.environ[LAUNCHER_PID]):  # it died before the line above
        os._exit(1)


def init() -> None:
    """Join the launched processes (before anything is read); accelerate then uses the same group."""
    import torch
    import torch.distributed as dist

    die_with_launcher()
    if world_size() > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def from_main(value):
    """rank 0's `value` on every process (a sync point: the others wait until rank 0 has it)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
