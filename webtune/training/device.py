"""Where the TRL loop (backends hf and unsloth) trains: device, precision, CPU threads and sharding, said in
one progress line, and a GPU running out of memory said in one line with the knobs that fix it.

    where = placement(cuda=torch.cuda.is_available(), precision="bf16", threads=2, sharding="none")
    job.progress(where.describe())    # train: cpu, bf16 autocast, 2 threads
"""

import contextlib
from dataclasses import dataclass

import torch

from webtune.training import TrainError, distributed


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512-BF16 or AMX), where oneDNN makes autocast pay.

    Measured on 2 cores (SmolLM2-135M, LoRA r 16): 287 vs 192 tokens/s with AMX; without it (AVX2 only)
    bf16 is emulated: 5 vs 60 tokens/s (bench/cpu_train_speed.json). torch exposes the CPUID checks only
    as private helpers, so a torch without them counts as "no".
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_precision(choice: str, cuda: bool) -> str:
    """train.hf.precision -> "bf16" (autocast; the weights stay fp32) or "fp32".

    auto: bf16 on a GPU that supports it and on a CPU with native bf16, fp32 elsewhere.
    """
    if choice != "auto":
        return choice
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_cpu_bf16() else "fp32"


@dataclass(frozen=True)
class Placement:
    """Where and how one training process runs."""

    cuda: bool
    precision: str  # "bf16" (autocast) | "fp32"
    processes: int  # training processes in the run (distributed.world_size)
    threads: int  # torch CPU threads of this process
    sharding: str  # train.hf.sharding as it runs: "none" where the backend launches no processes

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def describe(self) -> str:
        """The run's first progress line, e.g. `train: cpu, bf16 autocast, 2 threads`."""
        return (f"train: {self.device}, {self.precision}"
                + (" autocast" if self.precision == "bf16" else "")
                + ("" if self.cuda else f", {self.threads} threads")
                + (f", {self.processes} processes" if self.processes > 1 else "")
                + (f", {self.sharding.replace('_', ' ')} sharded" if self.sharding != "none" else ""))


def placement(*, cuda: bool, precision: str, threads: int, sharding: str) -> Placement:
    """The run's Placement; TrainError for a sharding this device cannot run."""
    processes = distributed.world_size()
    if sharding == "fsdp_offload" and not cuda:
        raise TrainError("train.hf.sharding fsdp_offload offloads a GPU's shards to the CPU; on a CPU "
                         "use fsdp (or none)")
    # a multi-process run shares the CPU's cores: 2 threads over 2 processes = 1 each
    return Placement(cuda=cuda, precision=precision, processes=processes,
                     threads=max(1, threads // processes), sharding=sharding)


@contextlib.contextmanager
def out_of_memory_said(params, state=None):
    """A CUDA out-of-memory error as one line with the knobs that fix it, not a traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        where = f"at step {state.global_step}" if state is not None else "placing the base on the GPU"
        raise TrainError(f"out of GPU memory {where} (train.hf.sharding {params.hf.sharding}, "
                         f"{distributed.world_size()} processes): lower train.batch_size or "
                         "train.hf.batch_tokens, or shard the base (train.hf.sharding fsdp over more "
                         "processes, or fsdp_offload)") from None
