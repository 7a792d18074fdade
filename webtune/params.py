"""params.yaml as frozen dataclasses: one per section, loaded strictly, range-checked at load time.

A missing or unknown key, a wrong type or a value out of range is a ParamsError that starts with the
dotted key (`clean.near_dup_thresold: unknown key`, `train.backend: 'jax' is not one of hf`), so a typo in
params.yaml or in `dvc exp run -S` fails before any work instead of silently using a default. Each
range check sits on the field it checks (`knob(at_least(1))`). Lists become tuples so every params
object is immutable and hashable.

Knobs marked `report=True` change only what a report shows (how many sample rows it lists), never an
output a later stage reads: the run fingerprint and the model card leave them out, so changing one
re-runs its own stage and nothing after it.
"""

import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path

import yaml

from webtune.errors import ParamsError

Check = Callable[[object], str | None]  # a value -> None when fine, else what is wrong with it


def knob(check: Check | None = None, *, report: bool = False, variant_of: str | None = None):
    """A params field with an optional range check; `report`: the knob only shapes a report;
    `variant_of`: the field is one variant's section (train.hf), which counts only while the section's
    selector field (train.backend) names it."""
    return dataclasses.field(metadata={"check": check, "report": report, "variant_of": variant_of})


def at_least(low) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}, got {v!r}"


def between(low, high) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v!r}"


def positive(v) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def one_of(*allowed) -> Check:
    return lambda v: None if v in allowed else f"{v!r} is not one of {', '.join(map(str, allowed))}"


def _source_names() -> tuple[str, ...]:
    from webtune.sources import SOURCES

    return tuple(SOURCES)


def _backend_names() -> tuple[str, ...]:
    from webtune.training import CHOICES

    return CHOICES


@dataclasses.dataclass(frozen=True)
class PydocParams:
    topics: bool = knob()
    modules: tuple[str, ...] = knob()


@dataclasses.dataclass(frozen=True)
class FilesParams:
    patterns: tuple[str, ...] = knob()


@dataclasses.dataclass(frozen=True)
class HttpParams:
    urls: tuple[str, ...] = knob()
    timeout_s: float = knob(positive)
    retries: int = knob(at_least(0))
    backoff_s: float = knob(at_least(0))
    user_agent: str = knob()


def zone_name(v) -> str | None:
    """Bright Data zone names are ASCII letters, digits, '_' and '-'."""
    ok = bool(v) and v.isascii() and all(c.isalnum() or c in "_-" for c in v)
    return None if ok else f"{v!r} is not a zone name (letters, digits, _ and - only)"


def api_url(v) -> str | None:
    """An http(s) base URL without credentials in it (tokens come from the environment)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{v!r} is not an http(s) URL"
    if parts.username or parts.password:
        return "must not carry credentials: the token comes from the environment or .env"
    return None


@dataclasses.dataclass(frozen=True)
class UnlockerParams:
    urls: tuple[str, ...] = knob()
    zone: str = knob(zone_name)
    country: str = knob()
    api_url: str = knob(api_url)
    requests_per_period: int = knob(at_least(1))
    period_s: float = knob(positive)
    concurrency: int = knob(between(1, 30))
    timeout_s: float = knob(positive)
    retries: int = knob(at_least(0))
    backoff_s: float = knob(at_least(0))
    stop_at_429s: int = knob(between(1, 24))
    retry_failed: bool = knob()
    refresh: int = knob(at_least(0))


@dataclasses.dataclass(frozen=True)
class DatasetParams:
    dataset_id: str = knob(lambda v: None if v.startswith("gd_") else f"{v!r} is not a dataset id (gd_...)")
    discover_by: str = knob(one_of("", "keyword", "category_url", "best_sellers_url"))
    inputs: tuple[str, ...] = knob()
    limit_per_input: int = knob(at_least(0))
    api_url: str = knob(api_url)
    poll_interval_s: float = knob(positive)
    poll_timeout_s: float = knob(positive)
    timeout_s: float = knob(positive)
    retries: int = knob(at_least(0))
    backoff_s: float = knob(at_least(0))
    stop_at_429s: int = knob(between(1, 24))
    part_records: int = knob(lambda v: None if v == 0 or v >= 1000 else f"must be 0 or >= 1000, got {v!r}")
    refresh: int = knob(at_least(0))


@dataclasses.dataclass(frozen=True)
class ScrapeParams:
    source: str = knob(lambda v: one_of(*_source_names())(v))
    max_doc_bytes: int = knob(at_least(1))
    pydoc: PydocParams = knob()
    files: FilesParams = knob()
    http: HttpParams = knob()
    brightdata_unlocker: UnlockerParams = knob()
    brightdata_dataset: DatasetParams = knob()


@dataclasses.dataclass(frozen=True)
class PairsParams:
    task: str = knob(one_of("doc_qa", "product_copy"))
    doc_question: str = knob()
    section_question: str = knob()
    min_answer_chars: int = knob(at_least(1))
    max_instruction_chars: int = knob(at_least(10))
    max_answer_chars: int = knob(at_least(1))
    product_system_prompt: str = knob()
    product_max_description_chars: int = knob(at_least(1))


@dataclasses.dataclass(frozen=True)
class CleanParams:
    unicode_form: str = knob(one_of("NFC", "NFKC", "NFD", "NFKD"))
    max_bad_char_ratio: float = knob(between(0, 1))
    min_chars: int = knob(at_least(0))
    max_chars: int = knob(at_least(1))
    boilerplate_max_words: int = knob(at_least(0))
    boilerplate_patterns: tuple[str, ...] = knob()
    mask_emails: bool = knob()
    mask_secrets: bool = knob()
    near_dup_threshold: float = knob(between(0, 1))
    minhash_permutations: int = knob(at_least(1))
    minhash_bands: int = knob(at_least(1))
    shingle_words: int = knob(at_least(1))
    seed: int = knob()
    workers: int = knob(at_least(1))
    batch_docs: int = knob(at_least(1))
    pairs: PairsParams = knob()

    def problems(self):
        if self.minhash_permutations % self.minhash_bands:
            yield "minhash_bands", (f"must divide clean.minhash_permutations ({self.minhash_permutations}), "
                                    f"got {self.minhash_bands}")
        if self.min_chars > self.max_chars:
            yield "min_chars", f"{self.min_chars} is above clean.max_chars ({self.max_chars})"


@dataclasses.dataclass(frozen=True)
class ValidateParams:
    min_rows: int = knob(at_least(0))
    report_samples: int = knob(at_least(0), report=True)
    batch_rows: int = knob(at_least(1))


@dataclasses.dataclass(frozen=True)
class TinyParams:
    """base.tiny: the recipe of the tiny gpt-oss (webtune.models.tiny); read only when base.model is it."""

    vocab_size: int = knob(at_least(64))
    hidden_size: int = knob(at_least(1))
    num_layers: int = knob(at_least(1))
    num_heads: int = knob(at_least(1))
    num_kv_heads: int = knob(at_least(1))
    num_experts: int = knob(at_least(1))
    experts_per_token: int = knob(at_least(1))
    max_position_embeddings: int = knob(at_least(1))
    warmup_steps: int = knob(at_least(0))
    warmup_batch_size: int = knob(at_least(1))
    warmup_seq_len: int = knob(at_least(2))
    warmup_lr: float = knob(positive)
    seed: int = knob()
    threads: int = knob(at_least(1))

    def problems(self):
        if self.hidden_size % self.num_heads:
            yield "hidden_size", (f"{self.hidden_size} is not divisible by base.tiny.num_heads "
                                  f"({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            yield "num_kv_heads", (f"{self.num_kv_heads} does not divide base.tiny.num_heads "
                                   f"({self.num_heads})")
        if self.experts_per_token > self.num_experts:
            yield "experts_per_token", (f"{self.experts_per_token} is above base.tiny.num_experts "
                                        f"({self.num_experts})")


@dataclasses.dataclass(frozen=True)
class BaseParams:
    model: str = knob()
    revision: str = knob()
    tiny: TinyParams = knob()


@dataclasses.dataclass(frozen=True)
class FormatParams:
    max_length: int = knob(at_least(1))
    train_ratio: float = knob(between(0, 1))
    val_ratio: float = knob(between(0, 1))
    split_seed: str = knob()
    batch_rows: int = knob(at_least(1))
    workers: int = knob(at_least(1))
    report_samples: int = knob(at_least(0), report=True)
    system_prompt: str = knob()

    def problems(self):
        if self.train_ratio + self.val_ratio > 1:
            yield "val_ratio", ("format.train_ratio + format.val_ratio is "
                                f"{self.train_ratio + self.val_ratio}, above 1")


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
# train.hf.sharding: each process holds the whole base (DDP) or a shard of it (FSDP; training/distributed.py)
SHARDINGS = ("none", "fsdp", "fsdp_offload")


@dataclasses.dataclass(frozen=True)
class HfParams:
    threads: int = knob(at_least(1))
    precision: str = knob(one_of("auto", "bf16", "fp32"))
    batch_tokens: int = knob(at_least(0))
    batch_layout: str = knob(one_of(*BATCH_LAYOUTS))
    processes: int = knob(at_least(1))
    sharding: str = knob(one_of(*SHARDINGS))
    gradient_checkpointing: bool = knob()


@dataclasses.dataclass(frozen=True)
class UnslothParams:
    load_in_4bit: bool = knob()
    gradient_checkpointing: str = knob(one_of("unsloth", "transformers", "off"))
    batch_tokens: int = knob(at_least(0))
    batch_layout: str = knob(one_of(*BATCH_LAYOUTS))


@dataclasses.dataclass(frozen=True)
class OpenAIParams:
    model: str = knob(lambda v: None if v.strip() else "must name a model")
    n_epochs: int = knob(between(0, 50))
    batch_size: int = knob(at_least(0))
    learning_rate_multiplier: float = knob(at_least(0))
    suffix: str = knob(lambda v: None if len(v) <= 64 else f"at most 64 characters, got {len(v)}")
    base_url: str = knob(lambda v: None if v == "" else api_url(v))
    max_example_tokens: int = knob(at_least(1))
    poll_interval_s: float = knob(positive)
    poll_timeout_s: float = knob(positive)


@dataclasses.dataclass(frozen=True)
class TrainParams:
    backend: str = knob(lambda v: one_of(*_backend_names())(v))
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
    hf: HfParams = knob(variant_of="backend")
    unsloth: UnslothParams = knob(variant_of="backend")
    openai: OpenAIParams = knob(variant_of="backend")

    def problems(self):
        if self.max_steps == 0 and self.epochs == 0:
            yield "max_steps", "and train.epochs are both 0: nothing to train"
        if not self.channels:
            yield "channels", "is empty: no assistant token would be trained"


@dataclasses.dataclass(frozen=True)
class EvaluateParams:
    samples: int = knob(at_least(0))
    max_new_tokens: int = knob(at_least(1))
    repetition_penalty: float = knob(at_least(1.0))  # below 1 would reward repeats
    no_repeat_ngram_size: int = knob(at_least(0))
    batch_size: int = knob(at_least(1))
    threads: int = knob(at_least(1))


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
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, where)
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__}")
        (item_type, _) = typing.get_args(annotation)
        return tuple(_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is types.UnionType:
        raise TypeError(f"{where}: unions are not supported in params")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ParamsError(f"{where}: expected true/false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ParamsError(f"{where}: expected an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ParamsError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls, data: dict, where: str):
    """Build dataclass `cls` from `data`; `where` is the dotted path used in error messages."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields.keys())
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(fields))})")
    missing = [n for n in sorted(fields) if n not in data]
    if missing:
        raise ParamsError(f"{where}.{missing[0]}: missing key")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        values[name] = _convert(data[name], hints[name], f"{where}.{name}")
        check = field.metadata.get("check")
        if check is not None and (problem := check(values[name])):
            raise ParamsError(f"{where}.{name}: {problem}")
    params = cls(**values)
    for key, problem in getattr(params, "problems", lambda: ())():
        raise ParamsError(f"{where}.{key}: {problem}")
    return params


def load_section(section: str, path: str | Path = "params.yaml"):
    """Load one section of params.yaml as its frozen dataclass."""
    if section not in SECTIONS:
        raise ValueError(f"unknown params section {section!r} (known: {', '.join(SECTIONS)})")
    try:
        all_params = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if section not in all_params:
        raise ParamsError(f"{section}: missing section in {path}")
    return from_dict(SECTIONS[section], all_params[section], section)


def as_dict(params) -> dict:
    """Params back to plain dicts/lists (for metrics files and model cards)."""
    return dataclasses.asdict(params)


def without_report_knobs(params) -> dict:
    """as_dict without the knobs that only shape reports, nor the sections of variants not selected
    (what a run's outputs are a function of: train.openai's knobs change nothing an hf run makes)."""
    out = {}
    for field in dataclasses.fields(params):
        if field.metadata.get("report"):
            continue
        selector = field.metadata.get("variant_of")
        if selector is not None and getattr(params, selector) != field.name:
            continue
        value = getattr(params, field.name)
        out[field.name] = without_report_knobs(value) if dataclasses.is_dataclass(value) else value
    return out
