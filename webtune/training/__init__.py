"""Training backends: what fits a LoRA, behind one small seam the train stage drives the same way for all.

    backend = get_backend(params.backend)          # train.backend: one of BACKENDS
    backend.prepare(); api_key = backend.secret()  # the stage's main: fail fast, before any work
    job = backend.job(params, inputs, progress)    # the data checked (its mask report written), state found
    fitted = backend.fit(job)                      # -> Fitted (steps, losses, the trained model)
    metrics = backend.metrics(job, fitted)         # metrics/train.json; TrainError for a non-finite loss
    backend.save(job, fitted, metrics, folder)     # the adapter folder's files (renamed into place)
    backend.finish(job, fitted)                    # after the rename: e.g. clear the checkpoints

A backend is one module holding `BACKEND` and `PARAMS` (the dataclass of its own section under `train:`
in params.yaml: `train.hf`, `train.unsloth`, `train.openai`), and one line in webtune.registry.BACKENDS.
The local backends (webtune.training.local: `hf`, and `unsloth`, which swaps only loading and the LoRA
attach under hf's TRL loop) load the base and fit on its tokenized, gated rows
(webtune.training.supervision, run, batching, card). `openai` fine-tunes on the host from the format
stage's JSONL: it has no base to load, and its job ids live in the same persistent checkpoints folder.
`auto` is not a module: `unsloth.resolve` makes it unsloth where CUDA and a compatible Unsloth are
present, hf otherwise, before the run's fingerprint is taken.
"""

import abc
import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Inputs:
    """What the train stage hands every backend: dvc.yaml's paths, format.max_length and the API key its
    main read (Backend.secret). A backend reads what it trains on and ignores the rest."""

    base_dir: Path  # the base stage's folder
    train_path: Path  # the format stage's train split (Parquet)
    val_path: Path  # its val split (held-out loss)
    jsonl_dir: Path | None  # the format stage's OpenAI-format JSONL folder (train.jsonl, val.jsonl)
    checkpoints: Path  # the persistent folder: checkpoints, or a hosted job's ids (never pay twice)
    mask_report: Path  # Markdown: what is supervised
    live_dir: Path  # dvclive folder: per-step curves
    max_length: int  # tokens per row at most (format.max_length)
    api_key: str | None = field(default=None, repr=False)  # never printed, never written


@dataclass
class FitJob:
    """What a local backend fits: the loaded base, checked rows in the run's order, and where the run
    keeps its state (webtune.training.local builds it)."""

    base: Any  # webtune.models.Base, from the backend's own load
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
    # what the run's outputs record: the run's fingerprint (run.run_fingerprint), the splits' md5 (the
    # model card) and the train split's mask report (supervision.MaskReport: supervised tokens)
    fingerprint: str = ""
    data_md5: dict = field(default_factory=dict)
    supervision: Any = None


@dataclass
class Fitted:
    model: Any  # the trained PeftModel (save_pretrained writes the adapter), or a hosted model's id
    steps: int
    train_loss: float | None  # None only where a host reports no loss
    tokens_seen: int
    train_seconds: float  # 0 where nothing was timed here (a hosted job)
    device: str  # "cuda" | "cpu" | "hosted"
    precision: str  # "bf16" (autocast) | "fp32": what ran, whatever train.hf.precision asked; "hosted"
    val_loss: float | None = None
    base_val_loss: float | None = None
    peak_gpu_gib: float | None = None  # the most GPU memory the run's tensors held (this process's GPU)
    # the trained weights, whole, when the model is sharded (FSDP): what save_pretrained must write
    adapter_state: dict | None = None


class Backend(abc.ABC):
    name: str

    def prepare(self) -> None:  # noqa: B027 (a hook: most backends need nothing here)
        """Called first, before the data is read: fail fast on a missing environment (default: nothing)."""

    def secret(self) -> str | None:
        """The API key this backend needs, from the environment or .env; called by the stage's main before
        any work, so a missing key fails first (default: none)."""
        return None

    def processes_to_launch(self, params) -> int:
        """Training processes the train stage starts itself (webtune.training.distributed); 0: it trains
        in its own process."""
        return 0

    @abc.abstractmethod
    def job(self, params, inputs: Inputs, progress: Callable[[str], None]):
        """What fit trains on, checked, with the run's state found (a resume); writes the mask report."""

    @abc.abstractmethod
    def fit(self, job) -> Fitted:
        """Train; checkpoint into the persistent folder, resuming where a killed run stopped."""

    @abc.abstractmethod
    def metrics(self, job, fitted: Fitted) -> dict:
        """metrics/train.json; TrainError where a loss is not finite (nothing is written then)."""

    @abc.abstractmethod
    def save(self, job, fitted: Fitted, metrics: dict, folder: Path) -> None:
        """Write the adapter folder's files into `folder` (the stage renames it into place)."""

    def finish(self, job, fitted: Fitted) -> None:  # noqa: B027 (a hook: a hosted job keeps its state)
        """Called once the adapter folder is in place (default: nothing)."""


def get_backend(name: str) -> Backend:
    """The backend module's BACKEND; `auto` must be resolved first (the run's fingerprint names it)."""
    if name not in BACKENDS:
        raise TrainError(f"train.backend: unknown backend {name!r} (known: {', '.join(BACKEND_CHOICES)})")
    return importlib.import_module(BACKENDS[name]).BACKEND
