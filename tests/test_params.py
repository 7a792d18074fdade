"""params.yaml, dvc.yaml and stages/ agree; params load strictly."""

import dataclasses
import re

import pytest
import yaml

from stages import params as P


def test_every_params_section_loads(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    assert set(P.SECTIONS) <= set(raw), "params.yaml lacks a section the code defines"
    for section in P.SECTIONS:
        loaded = P.load_section(section, repo / "params.yaml")
        assert dataclasses.is_dataclass(loaded)


def test_a_misspelt_key_is_named(tmp_path, repo):
    text = (repo / "params.yaml").read_text().replace("near_dup_threshold:", "near_dup_thresold:")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"clean\.near_dup_thresold: unknown key"):
        P.load_section("clean", tmp_path / "params.yaml")


def test_a_missing_nested_key_is_named(tmp_path, repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    del raw["scrape"]["http"]["timeout_s"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"scrape\.http\.timeout_s: missing key"):
        P.load_section("scrape", tmp_path / "params.yaml")


def test_a_wrong_type_is_named(tmp_path, repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["clean"]["workers"] = "two"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"clean\.workers: expected an integer"):
        P.load_section("clean", tmp_path / "params.yaml")


def test_params_are_frozen(load):
    with pytest.raises(dataclasses.FrozenInstanceError):
        load("clean").min_chars = 1


def test_every_knob_in_params_yaml_has_a_comment(repo):
    for lineno, line in enumerate((repo / "params.yaml").read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith("- "):
            continue
        key, _, value = stripped.partition(":")
        if value.strip() and not value.strip().startswith("#"):  # a leaf knob, not a section header
            assert "#" in value, f"params.yaml:{lineno}: knob {key!r} has no comment saying what it trades off"


def test_dvc_yaml_stages_match_modules_and_params(repo):
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    raw_params = yaml.safe_load((repo / "params.yaml").read_text())
    for name, stage in dvc["stages"].items():
        module = repo / "stages" / f"{name}.py"
        assert module.exists(), f"stage {name} has no module stages/{name}.py"
        assert f"python -m stages.{name} " in stage["cmd"], f"stage {name} must run its own module"
        assert f"stages/{name}.py" in stage["deps"], f"stage {name} must depend on its own module"
        for entry in stage.get("params", []):
            keys = entry.split(".")
            node = raw_params
            for k in keys:
                assert isinstance(node, dict) and k in node, f"stage {name} lists unknown param {entry}"
                node = node[k]
        # Every path the command mentions is declared as a dep or an output, so DVC sees it.
        declared = set(stage.get("deps", []))
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                declared.add(next(iter(out)) if isinstance(out, dict) else out)
        for path in re.findall(r"--[a-z-]+ (\S+)", stage["cmd"]):
            assert any(path == d or path.startswith(d.rstrip("/") + "/") or d.startswith(path.rstrip("/") + "/")
                       for d in declared), f"stage {name}: {path} is in cmd but not declared"
        # stages/ modules imported by the stage are deps (so editing them re-runs it).
        source = module.read_text()
        for imported in re.findall(r"from stages(?:\.(\w+))? import ([\w, ]+)", source):
            mod, names = imported
            for m in ([mod] if mod else [n.strip() for n in names.split(",")]):
                path = repo / "stages" / f"{m}.py"
                if path.exists() and m not in ("params", "sources"):
                    assert f"stages/{m}.py" in stage["deps"], f"stage {name} imports stages/{m}.py but does not depend on it"


def test_no_secret_knobs_in_params(repo):
    keys = re.findall(r"^\s*([\w.]+):", (repo / "params.yaml").read_text(), flags=re.M)
    for key in keys:
        assert not re.search(r"(^|_)(api_?key|api_?token|auth_token|secret|secret_key|password|access_key_id|secret_access_key)$", key.lower()), (
            f"params.yaml has a secret-looking key {key!r}: secrets come from the environment only")
