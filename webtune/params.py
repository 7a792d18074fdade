"""params.yaml as frozen dataclasses: one per section, loaded strictly, range-checked at load time.

A missing or unknown key, a wrong type or a value out of range is a ParamsError that starts with the
dotted key (`clean.near_dup_thresold: unknown key`, `train.backend: 'jax' is not one of hf`), so a typo in
params.yaml or in `dvc exp run -S` fails before any work instead of silently using a default. Each
range check sits on the field it checks (`knob(at_least(1))`). Lists become tuples so every params
object is immutable and hashable.

Knobs marked `report=True` change only what a report shows (how many sample rows it lists), never an
output a later stage reads: the run fingerprint and the model card leave them out, so changing one
re-runs its own stage and nothing after it.

This module is the loader only. Each section's dataclass lives beside the code it configures
(`webtune.registry.SECTIONS` says where), and each variant (a source, a backend) owns its own section's
dataclass as its module's `PARAMS`: a section with variants declares one `Variants` field naming a
registry, and the loader builds `scrape.pydoc`, `train.hf`, ... from those modules. It imports no section
module itself (only by name, when loading), so nothing that imports it can form a cycle through it.
"""

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import yaml

from webtune.errors import ParamsError
from webtune.registry import SECTIONS

Check = Callable[[object], str | None]  # a value -> None when fine, else what is wrong with it


def knob(check: Check | None = None, *, report: bool = False):
    """A params field with an optional range check; `report`: the knob only shapes a report."""
    return dataclasses.field(metadata={"check": check, "report": report})


def variant_sections(registry: Mapping[str, str], selector: str | None = None):
    """The field holding one sub-section per name in `registry` (name -> module path; the module's
    `PARAMS` is the sub-section's dataclass). In params.yaml each sub-section sits in the section itself
    (`train.hf`, `train.openai`); `selector` names the field that picks one (train.backend): the others
    are checked at load time but are not part of what a run is a function of (without_report_knobs)."""
    return dataclasses.field(metadata={"variants": dict(registry), "selector": selector})


def at_least(low) -> Check:
    return lambda v: None if v >= low else f"must be at least {low}, got {v!r}"


def between(low, high) -> Check:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}, got {v!r}"


def positive(v) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


def one_of(*allowed) -> Check:
    return lambda v: None if v in allowed else f"{v!r} is not one of {', '.join(map(str, allowed))}"


def api_url(v) -> str | None:
    """An http(s) base URL without credentials in it (tokens come from the environment)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{v!r} is not an http(s) URL"
    if parts.username or parts.password:
        return "must not carry credentials: the token comes from the environment or .env"
    return None


class Variants(Mapping):
    """The variant sub-sections of one section (name -> frozen dataclass): immutable and hashable."""

    def __init__(self, sections: Mapping[str, object]):
        self._sections = dict(sections)

    def __getitem__(self, name: str):
        return self._sections[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sections)

    def __len__(self) -> int:
        return len(self._sections)

    def __hash__(self) -> int:
        return hash(tuple(self._sections.items()))

    def __repr__(self) -> str:
        return f"Variants({self._sections!r})"

    def replace(self, **sections) -> "Variants":
        """A copy with some sub-sections replaced (for tests and benchmarks)."""
        unknown = sorted(set(sections) - set(self._sections))
        if unknown:
            raise KeyError(f"no variant section {unknown[0]!r} (known: {', '.join(self._sections)})")
        return Variants({**self._sections, **sections})


class Sectioned:
    """Mixin for a section with a Variants field: a sub-section reads as an attribute
    (`params.hf` is `params.variants["hf"]`), as it is spelt in params.yaml (train.hf)."""

    def __getattr__(self, name: str):
        # only called when normal lookup fails; private names (pickle's probes) never reach the variants
        if not name.startswith("_") and name != "variants":
            variants = self.variants
            if name in variants:
                return variants[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def variant_params(module: str) -> type:
    """The params dataclass of the variant module `module` (its `PARAMS`)."""
    return importlib.import_module(module).PARAMS


def section_params(section: str) -> type:
    """The dataclass of params.yaml section `section` (webtune.registry.SECTIONS)."""
    if section not in SECTIONS:
        raise ValueError(f"unknown params section {section!r} (known: {', '.join(SECTIONS)})")
    module, name = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), name)


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


def _variants_field(cls) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(cls) if "variants" in f.metadata), None)


def from_dict(cls, data: dict, where: str):
    """Build dataclass `cls` from `data`; `where` is the dotted path used in error messages."""
    variants_field = _variants_field(cls)
    registry = variants_field.metadata["variants"] if variants_field else {}
    fields = {f.name: f for f in dataclasses.fields(cls) if f is not variants_field}
    known = fields.keys() | registry.keys()
    unknown = sorted(set(data) - known)
    if unknown:
        raise ParamsError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
    missing = [n for n in sorted(known) if n not in data]
    if missing:
        raise ParamsError(f"{where}.{missing[0]}: missing key")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        values[name] = _convert(data[name], hints[name], f"{where}.{name}")
        check = field.metadata.get("check")
        if check is not None and (problem := check(values[name])):
            raise ParamsError(f"{where}.{name}: {problem}")
    if variants_field:
        values[variants_field.name] = Variants({
            name: _convert(data[name], variant_params(module), f"{where}.{name}")
            for name, module in registry.items()})
    params = cls(**values)
    for key, problem in getattr(params, "problems", lambda: ())():
        raise ParamsError(f"{where}.{key}: {problem}")
    return params


def load_section(section: str, path: str | Path = "params.yaml"):
    """Load one section of params.yaml as its frozen dataclass (webtune.registry.SECTIONS names it)."""
    cls = section_params(section)
    try:
        all_params = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if section not in all_params:
        raise ParamsError(f"{section}: missing section in {path}")
    return from_dict(cls, all_params[section], section)


def replace(params, **changes):
    """dataclasses.replace that also takes variant sub-sections by name (`replace(train, hf=...)`)."""
    field = _variants_field(type(params))
    if field is not None:
        sections = {name: changes.pop(name) for name in list(changes) if name in field.metadata["variants"]}
        if sections:
            changes[field.name] = getattr(params, field.name).replace(**sections)
    return dataclasses.replace(params, **changes)


def as_dict(params) -> dict:
    """Params back to plain dicts, as params.yaml spells them (for metrics files and model cards)."""
    out = {}
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if isinstance(value, Variants):
            out.update((name, as_dict(section)) for name, section in value.items())
        else:
            out[field.name] = as_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def without_report_knobs(params) -> dict:
    """as_dict without the knobs that only shape reports, nor the sections of variants not selected
    (what a run's outputs are a function of: train.openai's knobs change nothing an hf run makes)."""
    out = {}
    for field in dataclasses.fields(params):
        if field.metadata.get("report"):
            continue
        value = getattr(params, field.name)
        if isinstance(value, Variants):
            selector = field.metadata.get("selector")
            out.update((name, without_report_knobs(section)) for name, section in value.items()
                       if selector is None or getattr(params, selector) == name)
        else:
            out[field.name] = without_report_knobs(value) if dataclasses.is_dataclass(value) else value
    return out
