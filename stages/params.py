"""params.yaml as frozen dataclasses: one per section, loaded strictly.

A missing or unknown key is a ValueError that names it (`clean.near_dup_thresold: unknown key`), so a
typo in params.yaml or in `dvc exp run -S` fails at load time instead of silently using a default.
Lists become tuples so every params object is immutable and hashable.
"""

import dataclasses
import types
import typing
from pathlib import Path

import yaml


@dataclasses.dataclass(frozen=True)
class PydocParams:
    topics: bool
    modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FilesParams:
    patterns: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class HttpParams:
    urls: tuple[str, ...]
    timeout_s: float
    retries: int
    backoff_s: float
    user_agent: str


@dataclasses.dataclass(frozen=True)
class ScrapeParams:
    source: str
    max_doc_bytes: int
    pydoc: PydocParams
    files: FilesParams
    http: HttpParams


@dataclasses.dataclass(frozen=True)
class PairsParams:
    task: str
    doc_question: str
    section_question: str
    min_answer_chars: int
    max_instruction_chars: int
    max_answer_chars: int
    product_system_prompt: str
    product_max_description_chars: int


@dataclasses.dataclass(frozen=True)
class CleanParams:
    unicode_form: str
    max_bad_char_ratio: float
    min_chars: int
    max_chars: int
    boilerplate_max_words: int
    boilerplate_patterns: tuple[str, ...]
    mask_emails: bool
    mask_secrets: bool
    near_dup_threshold: float
    minhash_permutations: int
    minhash_bands: int
    shingle_words: int
    seed: int
    workers: int
    batch_docs: int
    pairs: PairsParams


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    min_rows: int
    report_samples: int
    batch_rows: int


@dataclasses.dataclass(frozen=True)
class BaseParams:
    model: str
    revision: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    num_experts: int
    experts_per_token: int
    max_position_embeddings: int
    warmup_steps: int
    warmup_batch_size: int
    warmup_seq_len: int
    warmup_lr: float
    seed: int
    threads: int


@dataclasses.dataclass(frozen=True)
class FormatParams:
    max_length: int
    train_ratio: float
    val_ratio: float
    split_seed: str
    batch_rows: int
    workers: int


@dataclasses.dataclass(frozen=True)
class LoraParams:
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]
    target_parameters: tuple[str, ...]
    modules_to_save: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TrainParams:
    backend: str
    seed: int
    threads: int
    max_steps: int
    epochs: float
    batch_size: int
    grad_accum: int
    learning_rate: float
    lr_schedule: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    max_length: int
    packing: bool
    channels: tuple[str, ...]
    assistant_turns: str
    eval_steps: int
    save_steps: int
    logging_steps: int
    mask_report_rows: int
    lora: LoraParams


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    samples: int
    max_new_tokens: int
    batch_size: int
    threads: int


SECTIONS: dict[str, type] = {
    "scrape": ScrapeParams,
    "clean": CleanParams,
    "validate": ValidateParams,
    "base": BaseParams,
    "format": FormatParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
}


def _convert(value, annotation, where: str):
    """Check/convert one value against its dataclass annotation."""
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, where)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is types.UnionType:
        raise TypeError(f"{where}: unions are not supported in params")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: expected true/false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ValueError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str):
    """Build dataclass `cls` from `data`; `where` is the dotted path used in error messages."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    missing = [n for n in sorted(names) if n not in data]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: missing key")
    hints = typing.get_type_hints(cls)
    return cls(**{name: _convert(data[name], hints[name], f"{where}.{name}") for name in names})


def load_section(section: str, path: str | Path = "params.yaml"):
    """Load one section of params.yaml as its frozen dataclass."""
    if section not in SECTIONS:
        raise ValueError(f"unknown params section {section!r} (known: {', '.join(SECTIONS)})")
    all_params = yaml.safe_load(Path(path).read_text()) or {}
    if section not in all_params:
        raise ValueError(f"{section}: missing section in {path}")
    return from_dict(SECTIONS[section], all_params[section], section)


def as_dict(params) -> dict:
    """Params back to plain dicts/lists (for metrics files and model cards)."""
    return dataclasses.asdict(params)
