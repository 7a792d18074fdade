"""Training backends: what fits a LoRA on the base, behind one small seam.

The train stage owns everything a backend shares (webtune.training.supervision: the mask and its gate;
webtune.training.run: the run fingerprint, the checkpoint lock and resume, the data order; card.py: the
adapter's model card) and hands a backend a loaded base and the checked, ordered rows:

    backend = get_backend(params.backend)          # train.backend: one of BACKENDS
    base = backend.load(base_dir, params)          # default: webtune.models.load_base
    fitted = backend.fit(base, job)                # -> Fitted(model, metrics)

A backend is one module holding `BACKEND` and `PARAMS` (the dataclass of its own section under `train:`
in params.yaml: `train.hf`, `train.unsloth`, `train.openai`), and one line in webtune.registry.BACKENDS.
`unsloth` swaps only loading and the LoRA attach: the loop is hf's TRL loop. `auto` is not a module:
`unsloth.resolve` makes it unsloth where CUDA and a compatible Unsloth are present, hf otherwise, before the
run's fingerprint is taken.
"""

import abc
import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webtune.errors import UserError
from webtune.params import Sectioned, Variants, at_least, between, knob, one_of, positive, variant_sections
from webtune.registry import AUTO, BACKEND_CHOICES, BACKENDS  # noqa: F401 -- AUTO is re-exported


@dataclasses.dataclass(frozen=True)
class LoraParams:
    r: int = knob(at_least(1))
    alpha: int = knob(at_least(1))
    dropout: float = knob(between(0, 1))
    target_modules: tuple[str, ...] = knob()
    target_parameters: tuple[str, ...] = knob()
    modules_to_save: tuple[str, ...] = knob()

    def problems(self):
        if not self.target_modules and not self.target_parameters:
            yield "target_modules", ("and train.lora.target_parameters are both empty: "
                                     "LoRA would train nothing")


# train.<backend>.batch_layout: padded rows, rows end to end (where the packing probe passes), or either
BATCH_LAYOUTS = ("auto", "padded", "padding_free")


@dataclasses.dataclass(frozen=True)
class TrainParams(Sectioned):
    backend: str = knob(one_of(*BACKEND_CHOICES))
    seed: int = knob()
    max_steps: int = knob(at_least(0))
    epochs: float = knob(at_least(0))
    batch_size: int = knob(at_least(1))
    grad_accum: int = knob(at_least(1))
    learning_rate: float = knob(positive)
    lr_schedule: str = knob(one_of("linear", "cosine", "constant", "constant_with_warmup"))
    warmup_ratio: float = knob(between(0, 0.999))
    weight_decay: float = knob(at_least(0))
    max_grad_norm: float = knob(positive)
    packing: bool = knob()
    channels: tuple[str, ...] = knob()
    assistant_turns: str = knob(one_of("all", "last"))
    eval_steps: int = knob(at_least(1))
    eval_rows: int = knob(at_least(0))
    save_steps: int = knob(at_least(1))
    logging_steps: int = knob(at_least(1))
    mask_report_rows: int = knob(at_least(0), report=True)
    lora: LoraParams = knob()
    variants: Variants = variant_sections(BACKENDS, selector="backend")  # train.hf, train.openai, ...

    def problems(self):
        if self.max_steps == 0 and self.epochs == 0:
            yield "max_steps", "and train.epochs are both 0: nothing to train"
        if not self.channels:
            yield "channels", "is empty: no assistant token would be trained"


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
    params: TrainParams
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


def get_backend(name: str) -> Backend:
    """The backend module's BACKEND; `auto` must be resolved first (the run's fingerprint names it)."""
    if name not in BACKENDS:
        raise TrainError(f"train.backend: unknown backend {name!r} (known: {', '.join(BACKEND_CHOICES)})")
    return importlib.import_module(BACKENDS[name]).BACKEND
