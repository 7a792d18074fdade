"""params.yaml loads strictly into frozen dataclasses: every bad key or value is named by its dotted key."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from webtune import params as P
from webtune.errors import ParamsError
from webtune.registry import BACKENDS, BASES, SECTIONS, SOURCES


def write_with(tmp_path, repo, section: str, *keys_and_value):
    """The repo's params.yaml with one (nested) knob set: ("train", "hf", "threads", 0)"""
    *keys, value = keys_and_value
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    node = raw[section]
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_every_params_section_loads(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    assert set(SECTIONS) <= set(raw), "params.yaml lacks a section the code defines"
    for section in SECTIONS:
        loaded = P.load_section(section, repo / "params.yaml")
        assert isinstance(loaded, P.section_params(section))


@pytest.mark.parametrize("registry", [SOURCES, BACKENDS, BASES], ids=["sources", "backends", "bases"])
def test_each_variant_module_owns_its_section_dataclass(registry):
    for name, module in registry.items():
        cls = P.variant_params(module)
        assert dataclasses.is_dataclass(cls) and cls.__module__ == module, (name, cls)


def test_a_variant_section_reads_as_an_attribute_and_round_trips_as_params_yaml_spells_it(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    train = P.load_section("train", repo / "params.yaml")
    assert train.hf is train.variants["hf"] and train.hf.threads == raw["train"]["hf"]["threads"]
    assert json.loads(json.dumps(P.as_dict(train))) == raw["train"]
    assert list(P.as_dict(train))[-3:] == list(BACKENDS)
    # the run is a function of the selected backend's section only
    assert set(P.without_report_knobs(train)) & set(BACKENDS) == {train.backend}
    with pytest.raises(AttributeError, match="no attribute 'jax'"):
        train.jax  # noqa: B018


def test_a_variant_section_can_be_replaced_and_stays_hashable(load):
    train = load("train")
    faster = P.replace(train, hf=dataclasses.replace(train.hf, threads=7), seed=train.seed + 1)
    assert faster.hf.threads == 7 and train.hf.threads != 7 and faster.seed == train.seed + 1
    assert hash(faster) != hash(train) and faster != train
    with pytest.raises(KeyError, match="no variant section 'jax'"):
        train.variants.replace(jax=None)


def test_a_misspelt_key_is_named(tmp_path, repo):
    text = (repo / "params.yaml").read_text().replace("near_dup_threshold:", "near_dup_thresold:")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ParamsError, match=r"clean\.near_dup_thresold: unknown key"):
        P.load_section("clean", tmp_path / "params.yaml")


def test_a_missing_nested_key_is_named(tmp_path, repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    del raw["scrape"]["http"]["timeout_s"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"scrape\.http\.timeout_s: missing key"):
        P.load_section("scrape", tmp_path / "params.yaml")


def test_a_wrong_type_is_named(tmp_path, repo):
    path = write_with(tmp_path, repo, "clean", "tasks", "two")
    with pytest.raises(ParamsError, match=r"clean\.tasks: expected an integer"):
        P.load_section("clean", path)


def test_params_are_frozen(load):
    with pytest.raises(dataclasses.FrozenInstanceError):
        load("clean").min_chars = 1


# --- range checks at load time --------------------------------------------------------------------


def test_a_value_out_of_range_fails_at_load_time_naming_the_dotted_key(tmp_path, repo):
    path = write_with(tmp_path, repo, "evaluate", "max_new_tokens", 0)
    with pytest.raises(ParamsError, match=r"^evaluate\.max_new_tokens: must be at least 1, got 0$"):
        P.load_section("evaluate", path)


def test_a_nested_value_out_of_range_names_its_full_dotted_key(tmp_path, repo):
    path = write_with(tmp_path, repo, "train", "hf", "threads", 0)
    with pytest.raises(ParamsError, match=r"^train\.hf\.threads: must be at least 1, got 0$"):
        P.load_section("train", path)


def test_an_unknown_backend_names_the_known_ones(tmp_path, repo):
    path = write_with(tmp_path, repo, "train", "backend", "jax")
    with pytest.raises(ParamsError, match=r"^train\.backend: 'jax' is not one of hf, unsloth, openai, auto$"):
        P.load_section("train", path)


def test_an_unknown_source_names_the_known_ones(tmp_path, repo):
    path = write_with(tmp_path, repo, "scrape", "source", "ftp")
    with pytest.raises(ParamsError) as err:
        P.load_section("scrape", path)
    assert str(err.value) == f"scrape.source: 'ftp' is not one of {', '.join(SOURCES)}"
    assert {"pydoc", "files", "http"} <= set(SOURCES)


def test_a_cross_field_check_names_the_key_to_fix(tmp_path, repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["format"] |= {"train_ratio": 0.9, "val_ratio": 0.2}  # each in [0, 1], together above 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"^format\.val_ratio: .*above 1$"):
        P.load_section("format", tmp_path / "params.yaml")


def test_a_string_for_a_float_knob_is_a_type_error_not_a_crash_in_its_range_check(tmp_path, repo):
    path = write_with(tmp_path, repo, "clean", "near_dup_threshold", "high")
    with pytest.raises(ParamsError, match=r"^clean\.near_dup_threshold: expected float, got 'high'$"):
        P.load_section("clean", path)


# --- report-only knobs ------------------------------------------------------------------------------


def test_without_report_knobs_drops_the_report_knobs_and_the_backends_not_selected(load):
    train = load("train")
    slim = P.without_report_knobs(train)
    full = P.as_dict(train)
    assert "mask_report_rows" in full and "mask_report_rows" not in slim
    assert train.backend == "hf" and "openai" in full and "openai" not in slim  # hf ignores train.openai
    assert slim == {k: v for k, v in full.items() if k not in ("mask_report_rows", "openai", "unsloth")}
    assert slim["lora"] == full["lora"] and slim["hf"] == full["hf"]  # nested sections kept whole
    hosted = P.without_report_knobs(dataclasses.replace(train, backend="openai"))
    assert "openai" in hosted and "hf" not in hosted


def test_report_only_comments_in_params_yaml_match_the_report_knobs(repo):
    """A knob whose comment says "report only" is marked report=True, and every report=True knob says so."""
    marked = set()

    def walk(cls, prefix):
        for field in dataclasses.fields(cls):
            for name, module in field.metadata.get("variants", {}).items():
                walk(P.variant_params(module), f"{prefix}{name}.")
            if dataclasses.is_dataclass(field.type):
                walk(field.type, f"{prefix}{field.name}.")
            elif field.metadata.get("report"):
                marked.add(f"{prefix}{field.name}")

    for section in SECTIONS:
        walk(P.section_params(section), f"{section}.")
    said, path = set(), []
    for line in (repo / "params.yaml").read_text().splitlines():
        m = re.match(r"^( *)(\w+):(.*)$", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        path[depth:] = [m.group(2)]
        if "# report only" in m.group(3):
            said.add(".".join(path))
    assert marked and said == marked


# --- params.yaml itself ----------------------------------------------------------------------------


def test_every_knob_in_params_yaml_has_a_comment(repo):
    for lineno, line in enumerate((repo / "params.yaml").read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key, _, value = stripped.partition(":")
        if value.strip() and not value.strip().startswith("#"):  # a leaf knob, not a section header
            assert "#" in value, (
                f"params.yaml:{lineno}: knob {key!r} has no comment saying what it trades off")


SECRET = re.compile(
    r"(^|_)(api_?key|api_?token|auth_token|secret|secret_key|password|access_key_id|secret_access_key)$"
)


def test_no_secret_knobs_in_params(repo):
    keys = re.findall(r"^\s*([\w.]+):", (repo / "params.yaml").read_text(), flags=re.M)
    assert keys
    for key in keys:
        assert not SECRET.search(key.lower()), (
            f"params.yaml has a secret-looking key {key!r}: secrets come from the environment only")


# --- extending: a source is one module, one registry line and its params section ---------------------

RSS_SOURCE = '''
import dataclasses

from webtune.params import at_least, knob


@dataclasses.dataclass(frozen=True)
class RssParams:
    feeds: tuple[str, ...] = knob()
    max_items: int = knob(at_least(1))


PARAMS = RssParams


def fetch(params, *, sources_dir, now):
    yield from ()
'''


CHECK_RSS = """
import sys
from webtune import params as P
from webtune.sources import get_fetch

scrape = P.load_section("scrape", sys.argv[1])
assert (scrape.source, scrape.rss.feeds, scrape.rss.max_items) == ("rss", ("https://example.test/feed",), 5)
shared = ("source", "max_doc_bytes", "shard_docs")
assert [k for k in P.without_report_knobs(scrape) if k not in shared] == ["rss"]
assert list(get_fetch("rss")(scrape, sources_dir=None, now=lambda: "")) == []
print("loaded")
"""


def test_a_new_source_is_one_module_one_registry_line_and_its_section(tmp_path, repo):
    """On a copy of the library: add webtune/sources/rss.py, one line in webtune/registry.py and a
    `scrape.rss` section, and the scrape section loads, checks and fetches through it."""
    shutil.copytree(repo / "webtune", tmp_path / "webtune", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "webtune" / "sources" / "rss.py").write_text(RSS_SOURCE)
    registry = tmp_path / "webtune" / "registry.py"
    text = registry.read_text()
    anchor = 'SOURCES = {\n'
    assert anchor in text
    registry.write_text(text.replace(anchor, anchor + '    "rss": "webtune.sources.rss",\n', 1))
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["scrape"] |= {"source": "rss", "rss": {"feeds": ["https://example.test/feed"], "max_items": 5}}

    def load(raw) -> subprocess.CompletedProcess:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        return subprocess.run([sys.executable, "-c", CHECK_RSS, str(tmp_path / "params.yaml")],
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                              capture_output=True, text=True)

    done = load(raw)
    assert done.returncode == 0 and done.stdout == "loaded\n", done.stderr
    raw["scrape"]["rss"]["max_item"] = 1  # its knobs are checked like every other section's
    assert "webtune.errors.ParamsError: scrape.rss.max_item: unknown key" in load(raw).stderr
    del raw["scrape"]["rss"]  # and its section is required
    assert "webtune.errors.ParamsError: scrape.rss: missing key" in load(raw).stderr
