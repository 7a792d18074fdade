"""Training backends: what fits a LoRA on the base, behind one small seam.

The train stage owns everything a backend shares (webtune.training.supervision: the mask and its gate;
webtune.training.run: the run fingerprint, the checkpoint lock and resume, the data order; card.py: the
adapter's model card) and hands a backend a loaded base and the checked, ordered rows:

    backend = get_backend(params.backend)          # train.backend: one of BACKENDS
    base = backend.load(base_dir, params)          # default: webtune.models.load_base
    fitted = backend.fit(base, job)                # -> Fitted(model, metrics)

A backend is one module holding `BACKEND`, with its own section under `train:` in params.yaml
(`train.hf`, ...), which the train stage lists as `train.${train.backend}`. Unsloth (a later backend)
swaps only `load`: the loop is the same TRL loop.
"""

import abc
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webtune.errors import UserError

# Backend name (train.backend) -> module.
BACKENDS = {"hf": "webtune.training.hf", "openai": "webtune.training.openai"}


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


class Backend(abc.ABC):
    name: str

    def load(self, base_dir: Path, params):
        """The base to train on (model, tokenizer, chat format)."""
        from webtune.models import load_base

        return load_base(base_dir)

    @abc.abstractmethod
    def fit(self, base, job: FitJob) -> Fitted:
        """Train a LoRA on base.model; checkpoint into job.checkpoints, resuming from job.resume_from."""


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise TrainError(f"train.backend: unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    return importlib.import_module(BACKENDS[name]).BACKEND
