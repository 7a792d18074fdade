"""Model loading: the base the base stage wrote, its tokenizer and chat format, and an adapter on top.

A base folder (the base stage's output) holds two DVC outputs, so that what needs only the tokenizer
(format) does not re-run when only the weights change (a longer warm-up, say):

    models/base/tokenizer/   tokenizer files, the chat format's template, chat_format.json
    models/base/model/       base.json (what the base is: a packaged model's file sha256, the tiny
                             recipe's hash, or a hub id at a commit) and, for packaged and tiny bases,
                             its config and weights

    tokenizer, fmt = load_tokenizer("models/base/tokenizer")
    base = load_base("models/base")                 # .model .tokenizer .chat_format .info
    model = load_adapter(base, "models/adapter")    # a PeftModel; refuses an adapter of another base

format, train, evaluate and the chat commands all load through here (`webtune.models.inference.ChatModel`
generates with the format's stop tokens).
"""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webtune import formats, quiet
from webtune.errors import UserError, one_line
from webtune.formats import ChatFormat
from webtune.params import Sectioned, Variants, knob, variant_sections
from webtune.registry import BASES


@dataclasses.dataclass(frozen=True)
class BaseParams(Sectioned):
    model: str = knob()
    revision: str = knob()
    variants: Variants = variant_sections(BASES)  # base.tiny: webtune.models.tiny's recipe


MODEL_DIR, TOKENIZER_DIR = "model", "tokenizer"
INFO_FILE = "base.json"  # in MODEL_DIR
FORMAT_FILE = "chat_format.json"  # in TOKENIZER_DIR
TINY = "tiny-gpt-oss"
LOCAL_KINDS = ("packaged", "tiny")  # bases whose weights the base stage wrote into MODEL_DIR


class ModelError(UserError):
    """A base or adapter folder cannot be loaded as one (the message names the folder)."""


@dataclass
class Base:
    model: Any  # None when loaded without weights
    tokenizer: Any
    chat_format: ChatFormat
    info: dict


def save_tokenizer(tokenizer, fmt: ChatFormat, folder: Path) -> None:
    """Write a tokenizer with `fmt`'s template, pad token and name (what load_tokenizer reads back)."""
    tokenizer.chat_template = fmt.chat_template
    # One pad per format, set explicitly: some hub tokenizers have none (Llama-3), and SmolLM2's is
    # `<|im_end|>`, the end-of-turn token its answers are trained to end with.
    tokenizer.pad_token = fmt.pad_token
    tokenizer.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    (folder / FORMAT_FILE).write_text(json.dumps({"chat_format": fmt.name}, indent=2) + "\n")


def load_tokenizer(folder: str | Path):
    """(tokenizer, chat format) of a base's tokenizer folder; the format's template, checked to fit."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        name = json.loads((folder / FORMAT_FILE).read_text())["chat_format"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        raise ModelError(f"{folder}: no {FORMAT_FILE}: not a tokenizer folder "
                         "written by the base stage") from None
    fmt = formats.get(name)
    # local_files_only: the base stage saved every file here; never ask the hub (works with HF_HUB_OFFLINE=1).
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.chat_template = fmt.chat_template
    problem = fmt.fits(tokenizer)
    if problem:
        raise ModelError(f"{folder}: the tokenizer does not fit chat format {fmt.name}: {problem}")
    return tokenizer, fmt


def base_info(base_dir: str | Path) -> dict:
    path = Path(base_dir) / MODEL_DIR / INFO_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{path}: missing: {base_dir} is not a base folder "
                         "written by the base stage") from None


def load_base(base_dir: str | Path, with_model: bool = True) -> Base:
    """The base: tokenizer and format, and (with_model) its weights; a hub base loads its pinned commit."""
    import torch
    from transformers import AutoModelForCausalLM

    base_dir = Path(base_dir)
    info = base_info(base_dir)
    tokenizer, fmt = load_tokenizer(base_dir / TOKENIZER_DIR)
    model = None
    if with_model:
        quiet.bars_for_terminal()  # transformers' "Loading weights" bar: a stage log or a script gets none
    if with_model and info["kind"] in LOCAL_KINDS:
        # eager: gpt-oss's attention sinks exist only in the eager kernel; a dense model takes sdpa.
        attention = "eager" if info["kind"] == "tiny" else "sdpa"
        model = AutoModelForCausalLM.from_pretrained(base_dir / MODEL_DIR, local_files_only=True,
                                                     attn_implementation=attention, dtype=torch.float32)
    elif with_model and info["kind"] == "hub":
        cuda = torch.cuda.is_available()
        # Spread over the GPUs by accelerate's device map, except in a launched training process (DDP,
        # FSDP: webtune.training.distributed), where each process's model belongs on its own GPU and
        # the trainer places it; a map there would spread every process's copy over all of them.
        spread = cuda and "LOCAL_RANK" not in os.environ
        try:  # exactly the commit the base stage pinned; bf16 where a GPU can run it
            model = AutoModelForCausalLM.from_pretrained(
                info["model"], revision=info["revision"], dtype=torch.bfloat16 if cuda else torch.float32,
                device_map="auto" if spread else None)
        except OSError as e:  # offline, gated or missing
            reason = " ".join(str(e).split())  # hub errors span lines; the stage's error is one
            raise ModelError(f"cannot load {info['model']} at {info['revision']} "
                             f"(base {base_dir}): {reason}") from None
    elif with_model:
        raise ModelError(f"{base_dir / MODEL_DIR / INFO_FILE}: unknown base kind {info['kind']!r} "
                         f"(known: {', '.join(LOCAL_KINDS)}, hub)")
    return Base(model, tokenizer, fmt, info)


def prepare_for_lora(model) -> None:
    """Model-specific settings for training a LoRA on `model`.

    A mixture-of-experts router (gpt-oss) is frozen under LoRA, so its load-balancing loss only blurs
    the loss curves: 0 keeps the train loss equal to the assistant-token cross-entropy (TRL reads the
    coefficient from the config).
    """
    if hasattr(model.config, "router_aux_loss_coef"):
        model.config.router_aux_loss_coef = 0.0


KEY_ENV = "OPENAI_API_KEY"
OPENAI_URL = "https://api.openai.com/v1"  # the API's own endpoint: where train.openai.base_url "" goes
HOSTED_FILE = "hosted.json"  # in the adapter folder of a hosted fine-tune: the model it names


def read_hosted(adapter_dir: str | Path) -> dict | None:
    """The hosted model an adapter folder names (hosted.json, written by train.backend openai), or None
    for a local adapter."""
    path = Path(adapter_dir) / HOSTED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON ({e.msg})") from None


def check_adapter_dir(adapter_dir: str | Path) -> Path:
    """`adapter_dir` if it holds a PEFT adapter (checked before any base is loaded), else ModelError."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir} has no adapter_config.json: not a PEFT adapter folder (run train)")
    return adapter_dir


def load_adapter(base: Base, adapter_dir: str | Path):
    """A PeftModel of `base.model` with the adapter in `adapter_dir`, after checking it belongs to this
    base."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    adapter_dir = check_adapter_dir(adapter_dir)
    if any((adapter_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        try:
            adapter_tokenizer = AutoTokenizer.from_pretrained(adapter_dir, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load the tokenizer saved in {adapter_dir}: {one_line(e)}") from None
        if adapter_tokenizer.get_vocab() != base.tokenizer.get_vocab():
            raise ModelError(f"the tokenizer saved in {adapter_dir} differs from the base's: the adapter was "
                             "trained on another base (re-run train on this base)")
    try:
        with quiet.ignoring(quiet.PEFT_READS_IS_GRADIENT_CHECKPOINTING):
            return PeftModel.from_pretrained(base.model, adapter_dir)
    except (RuntimeError, ValueError, KeyError) as e:  # e.g. LoRA shapes of a base of another width
        raise ModelError(f"cannot load the adapter in {adapter_dir} onto this base: "
                         f"{str(e).splitlines()[0]}") from None
