"""Several training processes on one machine: data parallel (DDP) or sharded (FSDP) over the hf backend's
TRL loop.

`train.hf.processes: N` (N > 1) makes the train stage start itself N times under torch's elastic
launcher (what `torchrun --standalone --nproc_per_node N` runs), one process per GPU, or per core group
on a CPU (gloo). The same command runs under `torchrun` or `accelerate launch` directly. The Trainer
(through accelerate) shares the work: each process reads every N-th micro-batch of the run's order, so a
step of N processes with `batch_size` rows each trains exactly the rows of a one-process step with N x
`batch_size` rows, and the gradients are averaged over the tokens of all of them.

`train.hf.sharding` says what each process holds. `none` (DDP): the whole base, the right choice while it
fits one GPU. `fsdp`: 1/N of every decoder layer's weights (torch's FSDP2 through accelerate), gathered
layer by layer as the forward and backward passes reach it, for a base too large for one GPU (each
process still reads the whole base into CPU memory before it is sharded); `fsdp_offload` also keeps the
shards in CPU memory between uses (GPU only).
The data order, and so the adapter, is the same either way; FSDP is always launched, even as one process,
since accelerate applies it only inside a process group.

Only the main process (rank 0) writes: the mask report, the checkpoint folder's state, the curves, the
adapter, the card and the metrics. The others wait where it writes (a broadcast of what they need).
"""

import logging
import os
import sys
import tempfile
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


def needs_launch(hf_params) -> bool:
    """Whether the train stage starts its training processes itself (train.hf.processes, sharding)."""
    return hf_params.processes > 1 or hf_params.sharding != "none"


def fsdp_arguments(sharding: str, model, activation_checkpointing: bool) -> dict:
    """SFTConfig's FSDP keywords for train.hf.sharding ({} for none): FSDP2, one unit per decoder layer.

    The layer class is the one the model names as never to be split across devices (transformers'
    `_no_split_modules`, e.g. LlamaDecoderLayer). The full state dict is what the trainer's checkpoints
    save and reload. Activation checkpointing is FSDP's own: transformers' would gather every layer's
    shards a second time in the backward pass.
    """
    if sharding == "none":
        return {}
    layers = sorted(set(getattr(model, "_no_split_modules", None) or ()))
    if not layers:
        raise TrainError(f"train.hf.sharding {sharding}: {type(model).__name__} names no decoder layer class "
                         "to shard by (_no_split_modules); use sharding: none")
    config = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
              "transformer_layer_cls_to_wrap": layers, "reshard_after_forward": True,
              "state_dict_type": "FULL_STATE_DICT",
              "cpu_offload": sharding == "fsdp_offload", "activation_checkpointing": activation_checkpointing}
    return {"fsdp": True, "fsdp_config": config}


def gathered_trainables(model) -> dict:
    """The trained weights (the adapter's), whole, by state-dict name, from a model sharded by FSDP.

    Every process must call it, in step: each shard's `full_tensor()` is a collective. Only the trainable
    tensors are gathered (a few MB), not the frozen base that accelerate's get_state_dict would gather too.
    """
    from torch.distributed.tensor import DTensor

    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name: (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().cpu()
            for name, tensor in model.state_dict().items() if name in trainable}


def launch(processes: int, argv: Sequence[str]) -> None:
    """Run `python -m stages.train argv` in `processes` processes; raise TrainError if one fails.

    Each process reports its own error in one line (webtune.errors); this adds the launcher's one line
    instead of its traceback summary.
    """
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # the launcher's per-rank error files go in a folder of its own making that it never removes (a
    # torchelastic_* folder in the temp dir per run): this one is removed when the run ends
    logs = tempfile.TemporaryDirectory(prefix="webtune-train-")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id="webtune-train",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          start_method="spawn", logs_specs=DefaultLogsSpecs(log_dir=logs.name))
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
        logs.cleanup()


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
    if not is_main():
        # the others' weight-loading bars would land in the middle of rank 0's lines (both write to the
        # same stderr, a bar without a newline until it ends): only rank 0 reports
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if launched() and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def leave() -> None:
    """Destroy this process's group once its training succeeded. A gloo group left to the interpreter's
    teardown can abort the process at exit ("terminate called without an active exception", pytorch
    #190489), failing a run that had finished: seen once in five test-suite runs on 2 busy cores. Not
    after an error, when another rank may still be inside a collective (as torchtitan #1342 found)."""
    if not launched():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def from_main(value):
    """rank 0's `value` on every process (a sync point: the others wait until rank 0 has it)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
