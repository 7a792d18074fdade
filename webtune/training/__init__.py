"""Training backends: what fits a LoRA on the base, behind one small seam.

The train stage owns everything a backend shares (webtune.training.supervision: the mask and its gate;
webtune.training.run: the run fingerprint, the checkpoint lock and resume, the data order; card.py: the
adapter's model card) and hands a backend a loaded base and the checked, ordered rows:

    backend = get_backend(params.backend)          # train.backend: one of BACKENDS
    base = backend.load(base_dir, params)          # default: webtune.models.load_base
    fitted = backend.fit(base, job)                # -> Fitted(model, metrics)

A backend is one module holding `BACKEND`, with its own section under `train:` in params.yaml
(`train.hf`, `train.unsloth`, `train.openai`). `unsloth` swaps only loading and the LoRA attach: the
loop is hf's TRL loop. `auto` is not a module: `resolve` makes it unsloth where CUDA and a compatible
Unsloth are present, hf otherwise, before the run's fingerprint is taken.
"""

import abc
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webtune.errors import UserError

# Backend name (train.backend) -> module.
BACKENDS = {"hf": "webtune.training.hf", "unsloth": "webtune.training.unsloth",
            "openai": "webtune.training.openai"}
AUTO = "auto"  # unsloth on a CUDA GPU with Unsloth installed, hf elsewhere
CHOICES = (*BACKENDS, AUTO)


class TrainError(UserError):
    """Training cannot start or cannot go on; the message says which rows or knobs, and what to do."""


@dataclass
class FitJob:
    """What a backend fits: checked rows in the run's order, and where the run keeps its state."""

    train: Any  # supervision.Encoded
    val: Any  # supervision.Encoded, or None without a validation split
    order: list[int]  # row index for every row the run trains on, in order (run.row_order)
    total_steps: int
    max_length: int  # tokens per row at most (format.max_length); rows are checked, never cut
    params: Any  # webtune.params.TrainParams
    checkpoints: Path  # the persistent checkpoint folder (webtune.training.run)
    resume_from: Path | None  # the last complete checkpoint of this run, or None
    live_dir: Path  # dvclive folder: per-step curves
    progress: Callable[[str], None]
    # token-budget micro-batches (webtune.training.batching), row indices each, in order; None: fixed rows
    micro_batches: list[list[int]] | None = None
    padding_free: bool = False  # rows laid end to end in each micro-batch (the packing probe passed)


@dataclass
class Fitted:
    model: Any  # the trained PeftModel: save_pretrained writes the adapter
    steps: int
    train_loss: float
    tokens_seen: int
    train_seconds: float
    device: str  # "cuda" | "cpu"
    precision: str  # "bf16" (autocast) | "fp32": what ran, whatever train.hf.precision asked for
    val_loss: float | None = None
    base_val_loss: float | None = None
    peak_gpu_gib: float | None = None  # the most GPU memory the run's tensors held (this process's GPU)
    # the trained weights, whole, when the model is sharded (FSDP): what save_pretrained must write
    adapter_state: dict | None = None


class Backend(abc.ABC):
    name: str

    def prepare(self) -> None:  # noqa: B027 (a hook: most backends need nothing here)
        """Called first, before the data is read: fail fast on a missing environment (default: nothing)."""

    def load(self, base_dir: Path, params, max_length: int | None = None):
        """The base to train on (model, tokenizer, chat format); max_length: format.max_length."""
        from webtune.models import load_base

        return load_base(base_dir)

    def processes_to_launch(self, params) -> int:
        """Training processes the train stage starts itself (webtune.training.distributed); 0: it trains
        in its own process."""
        return 0

    def batching(self, params) -> tuple[int, str]:
        """(tokens per micro-batch, 0 = train.batch_size rows; layout: auto | padded | padding_free)."""
        return 0, "padded"

    def packing_probe(self, base):
        """webtune.models.packing.Probe: may rows be laid end to end in this model?"""
        from webtune.models.packing import probe_packing

        return probe_packing(base.model, base.tokenizer)

    @abc.abstractmethod
    def fit(self, base, job: FitJob) -> Fitted:
        """Train a LoRA on base.model; checkpoint into job.checkpoints, resuming from job.resume_from."""


def resolve(name: str, cuda: bool | None = None, progress=None) -> str:
    """train.backend as it will run (`auto` -> unsloth or hf)."""
    from webtune.training.unsloth import resolve_backend

    return resolve_backend(name, cuda, progress)


def get_backend(name: str) -> Backend:
    """The backend module's BACKEND; `auto` must be resolved first (the run's fingerprint names it)."""
    if name not in BACKENDS:
        raise TrainError(f"train.backend: unknown backend {name!r} (known: {', '.join(CHOICES)})")
    return importlib.import_module(BACKENDS[name]).BACKEND
