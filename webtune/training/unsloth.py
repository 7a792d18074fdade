"""Backend `unsloth`: Unsloth's loading and LoRA (4-bit base, its gradient checkpointing), then the same
TRL loop as `hf`: the same checked labels, mask report, checkpoints and resume, NaN guard, adapter folder
and model card. Its own section is `train.unsloth` in params.yaml.

Unsloth runs on a CUDA GPU only and pins older trl/datasets/transformers than the rest of the project
(UNSLOTH_NEEDS), so it lives in a GPU environment of its own (`pip install -e '.[gpu]'`, README "GPU
training"). `train.backend: auto` takes it where CUDA and a compatible Unsloth are present and `hf`
otherwise; metrics/train.json's `backend` says which ran.

The adapter is a plain PEFT adapter: `PeftModel.from_pretrained` loads it on a transformers base.
"""

import dataclasses
import importlib.metadata
from pathlib import Path

from webtune import quiet
from webtune.params import at_least, knob, one_of
from webtune.registry import AUTO
from webtune.training import BATCH_LAYOUTS, TrainError
from webtune.training.hf import HfBackend


@dataclasses.dataclass(frozen=True)
class UnslothParams:
    load_in_4bit: bool = knob()
    gradient_checkpointing: str = knob(one_of("unsloth", "transformers", "off"))
    batch_tokens: int = knob(at_least(0))
    batch_layout: str = knob(one_of(*BATCH_LAYOUTS))


PARAMS = UnslothParams  # this variant's section (webtune.registry; webtune.params builds it)

# What unsloth 2026.10.x accepts (its own metadata pins; a newer trl or transformers fails inside its
# patches with errors that do not name the version). Checked before anything loads.
UNSLOTH_NEEDS = {"trl": "<=1.15.0", "datasets": "<5", "transformers": "<=5.17.0"}
GPU_INSTALL = "install the GPU environment: pip install -e '.[gpu]' (README: GPU training)"


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_problems(versions: dict[str, str | None] | None = None) -> list[str]:
    """What in this environment Unsloth cannot run with, one phrase each (empty: all fits)."""
    from packaging.specifiers import SpecifierSet

    versions = versions if versions is not None else {
        name: installed_version(name) for name in ("unsloth", *UNSLOTH_NEEDS)}
    problems = [] if versions.get("unsloth") else ["unsloth is not installed"]
    for package, spec in UNSLOTH_NEEDS.items():
        have = versions.get(package)
        if have is not None and have not in SpecifierSet(spec):
            problems.append(f"unsloth needs {package}{spec}, this environment has {package} {have}")
    return problems


def unsloth_usable(cuda: bool | None = None) -> tuple[bool, str]:
    """(usable, why not): CUDA present, unsloth importable, versions compatible."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if not cuda:
        return False, "no CUDA GPU"
    problems = version_problems()
    return (not problems), "; ".join(problems)


def resolve(name: str, cuda: bool | None = None, progress=None) -> str:
    """train.backend as it will run: `auto` becomes unsloth or hf; anything else is itself."""
    if name != AUTO:
        return name
    usable, why = unsloth_usable(cuda)
    if progress and not usable:
        progress(f"train: backend auto -> hf ({why})")
    return "unsloth" if usable else "hf"


# train.unsloth.gradient_checkpointing -> Unsloth's use_gradient_checkpointing
CHECKPOINTING = {"unsloth": "unsloth", "transformers": True, "off": False}


def load_kwargs(params, max_length: int) -> dict:
    """train.unsloth -> FastLanguageModel.from_pretrained's keywords (besides the model's path)."""
    import torch

    knobs = params.unsloth
    return {"max_seq_length": max_length, "dtype": torch.bfloat16, "load_in_4bit": knobs.load_in_4bit,
            "use_gradient_checkpointing": CHECKPOINTING[knobs.gradient_checkpointing],
            # the base stage's tokenizer and chat format are used, never unsloth's
            "random_state": params.seed, "fix_tokenizer": False}


def peft_kwargs(params) -> dict:
    """train.lora + train.unsloth -> FastLanguageModel.get_peft_model's keywords."""
    lora = params.lora
    return {"r": lora.r, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "bias": "none",
            "target_modules": list(lora.target_modules),
            "target_parameters": list(lora.target_parameters) or None,
            "modules_to_save": list(lora.modules_to_save) or None,
            "use_gradient_checkpointing": CHECKPOINTING[params.unsloth.gradient_checkpointing],
            "random_state": params.seed}


class UnslothBackend(HfBackend):
    name = "unsloth"

    def processes_to_launch(self, params) -> int:
        return 0  # train.hf.processes and sharding are the hf backend's: Unsloth trains in one process

    def prepare(self) -> None:
        """Unsloth patches transformers and trl as it is imported: before anything else imports them."""
        problems = version_problems()
        if problems:
            raise TrainError(f"train.backend unsloth: {'; '.join(problems)}: {GPU_INSTALL}")
        import torch

        if not torch.cuda.is_available():
            raise TrainError("train.backend unsloth needs a CUDA GPU (none is visible); "
                             "use train.backend hf or auto on this machine")
        import unsloth  # noqa: F401

    def load(self, base_dir: Path, params, max_length: int | None = None):
        from unsloth import FastLanguageModel

        from webtune.models import MODEL_DIR, TOKENIZER_DIR, Base, base_info, load_tokenizer

        self.prepare()
        quiet.bars_for_terminal()  # transformers' weight-loading bars, which Unsloth's loading draws too
        base_dir, info = Path(base_dir), base_info(base_dir)
        tokenizer, fmt = load_tokenizer(base_dir / TOKENIZER_DIR)
        where = ({"model_name": info["model"], "revision": info.get("revision")} if info.get("kind") == "hub"
                 else {"model_name": str(base_dir / MODEL_DIR), "local_files_only": True})
        # Unsloth loads a tokenizer too, from the weights' folder unless told otherwise: ours is beside it
        # (and the run uses load_tokenizer's, with the chat format checked).
        model, _ = FastLanguageModel.from_pretrained(**where, tokenizer_name=str(base_dir / TOKENIZER_DIR),
                                                     **load_kwargs(params, max_length or 2048))
        return Base(model=model, tokenizer=tokenizer, chat_format=fmt, info=info)

    def attach_lora(self, model, params):
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(model, **peft_kwargs(params)), None

    def pick_precision(self, params, cuda: bool) -> str:
        return "bf16"  # the base loads in bf16 (or 4-bit with bf16 compute): no fp32 path

    def batching(self, params) -> tuple[int, str]:
        return params.unsloth.batch_tokens, params.unsloth.batch_layout

    def trainer_checkpointing(self, params) -> bool:
        # Unsloth's trainer takes the kind get_peft_model set on the model and reads this flag only where
        # none was set; True (TRL's default, what the GPU benches measured) unless it is off altogether.
        return params.unsloth.gradient_checkpointing != "off"

    def packing_probe(self, base):
        """The probe on Unsloth's own padding-free path: its collator hands the model the rows' lengths."""
        import torch

        from webtune.models.packing import probe_packing

        lengths = (24, 17)
        return probe_packing(base.model, base.tokenizer, lengths, packed_inputs={
            "packed_seq_lengths": torch.tensor(lengths, dtype=torch.int32)})


BACKEND = UnslothBackend()
