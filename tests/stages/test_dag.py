"""dvc.yaml, params.yaml, stages/ and webtune/ agree: the DAG is exactly the stage modules, each stage lists
the code it runs as deps and the knobs it reads as params (by key), and no stage imports another."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from webtune import params as P
from webtune.registry import BACKENDS, SECTIONS, SOURCES

STAGES = ["scrape", "clean", "validate", "base", "format", "train", "evaluate"]
# Knobs a stage reads from another stage's section (its own section is checked in full).
BORROWED = {"evaluate": {"train.channels", "train.assistant_turns"}, "train": {"format.max_length"}}


@pytest.fixture(scope="module")
def dag(repo):
    return yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]


def test_stages_folder_is_exactly_the_dag(repo, dag):
    modules = sorted(p.stem for p in (repo / "stages").glob("*.py") if p.stem != "__init__")
    assert modules == sorted(STAGES) and list(dag) == STAGES
    for name in STAGES:
        lines = len((repo / "stages" / f"{name}.py").read_text().splitlines())
        assert lines <= 250, f"stages/{name}.py has {lines} lines: move library code to webtune/"


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def module_file(repo: Path, module: str) -> Path | None:
    path = repo / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def loaded_modules(section: str) -> set[str]:
    """The modules webtune.params imports by name to load `section`: the section's own module and, for a
    section with variants (scrape.<source>, train.<backend>, base.tiny), every variant's module."""
    cls = P.section_params(section)
    modules = {SECTIONS[section].split(":")[0]}
    for field in dataclasses.fields(cls):
        modules |= set(field.metadata.get("variants", {}).values())
    return modules


def webtune_closure(repo: Path, start: Path, also: set[str] = frozenset()) -> set[str]:
    """The webtune/ files `start` runs: its imports (and the modules in `also`), their imports, and so on."""
    seen, todo = set(), [start]
    pending = set(also)
    while todo:
        for module in imports_of(todo.pop()) | pending:
            if module.split(".")[0] != "webtune":
                continue
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                path = module_file(repo, ".".join(parts[:i]))
                rel = str(path.relative_to(repo)) if path is not None else None
                if rel is not None and rel not in seen:
                    seen.add(rel)
                    todo.append(path)
        pending = set()
    return seen


def sections_loaded_by(name: str) -> set[str]:
    return {name} | {key.split(".")[0] for key in BORROWED.get(name, ())}


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_runs_its_module_and_depends_on_the_code_it_runs(repo, dag, name):
    stage = dag[name]
    assert stage["cmd"].startswith(f"python -m stages.{name} "), f"stage {name} must run its own module"
    assert f"stages/{name}.py" in stage["deps"]
    imported = imports_of(repo / "stages" / f"{name}.py")
    assert not any(m.startswith("stages") for m in imported), f"stages/{name}.py imports another stage"
    deps = [d.rstrip("/") for d in stage["deps"]]
    loaded = set().union(*(loaded_modules(section) for section in sections_loaded_by(name)))
    for path in sorted(webtune_closure(repo, repo / "stages" / f"{name}.py", loaded)):
        assert any(path == d or path.startswith(d + "/") for d in deps), (
            f"stage {name} runs {path} but does not depend on it (editing it would not re-run the stage)")


# Paths a command names on purpose without DVC tracking them: the scrape ledger is a resume cache of what
# a paid source already fetched (git-ignored), not a dataset (stages/scrape.py, webtune/sources/ledger.py).
# The judge cache likewise holds paid verdicts, so a re-run never pays twice (webtune/evaluation/judge.py).
OUTSIDE_DVC = {".webtune/scrape-ledger.sqlite", ".webtune/judge-cache.sqlite", ".webtune/scratch/clean",
               ".webtune/scratch/validate", ".webtune/scratch/format"}


@pytest.mark.parametrize("name", STAGES)
def test_every_path_in_a_command_is_a_declared_dep_or_output(dag, name):
    stage = dag[name]
    declared = set(stage.get("deps", []))
    for kind in ("outs", "metrics", "plots"):
        for out in stage.get(kind, []):
            declared.add(next(iter(out)) if isinstance(out, dict) else out)
    for path in re.findall(r"--[a-z-]+ (\S+)", stage["cmd"]):
        if path in OUTSIDE_DVC:
            continue
        assert any(path == d or path.startswith(d.rstrip("/") + "/") or d.startswith(path.rstrip("/") + "/")
                   for d in declared), f"stage {name}: {path} is in cmd but not declared"


def leaves(obj, prefix: str) -> set[str]:
    """The dotted keys of every knob under `obj`, spelt as in params.yaml (variant sections included)."""
    if isinstance(obj, P.Variants):
        return set().union(*(leaves(section, f"{prefix[: prefix.rindex('.')]}.{name}")
                             for name, section in obj.items()))
    if dataclasses.is_dataclass(obj):
        return set().union(*(leaves(getattr(obj, f.name), f"{prefix}.{f.name}")
                             for f in dataclasses.fields(obj)))
    return {prefix}


def listed_keys(stage: dict, raw_params: dict) -> set[str]:
    """The dotted knobs a stage's `params:` list covers, templates resolved against params.yaml."""
    keys = set()
    for entry in stage.get("params", []):
        entry = re.sub(r"\$\{([\w.]+)\}", lambda m: str(_get(raw_params, m.group(1))), entry)
        keys.add(entry)
    return keys


def _get(raw: dict, dotted: str):
    node = raw
    for k in dotted.split("."):
        assert isinstance(node, dict) and k in node, f"unknown param {dotted}"
        node = node[k]
    return node


@pytest.mark.parametrize("name", STAGES)
def test_each_stage_lists_every_knob_it_reads_and_only_the_selected_variant(repo, dag, name):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    listed = listed_keys(dag[name], raw)
    for key in listed:
        _get(raw, key)  # every listed key exists
    section = P.load_section(name, repo / "params.yaml")
    needed = leaves(section, name) | BORROWED.get(name, set())
    # A source's section (scrape.<source>) counts only when selected. train lists every backend's section:
    # train.backend auto settles on hf or unsloth only when the stage runs.
    variants = {"scrape": ("source", tuple(SOURCES))}
    if name == "train":
        assert {f"train.{b}" for b in BACKENDS} <= listed, "train must list every backend's section"
    if name in variants:
        selector, names = variants[name]
        chosen = getattr(section, selector)
        needed = {k for k in needed if k.split(".")[1] not in names or k.split(".")[1] == chosen}
        assert not any(k.split(".")[1] in names and k.split(".")[1] != chosen for k in listed), (
            f"stage {name} lists a {selector} that is not selected")
    uncovered = sorted(k for k in needed if not any(k == x or k.startswith(x + ".") for x in listed))
    assert not uncovered, f"stage {name} reads {uncovered} but dvc.yaml does not list them"
    foreign = sorted(k for k in listed if k.split(".")[0] != name and k not in BORROWED.get(name, set()))
    assert not foreign, f"stage {name} lists other stages' knobs {foreign}"
