"""End to end: real `dvc repro` in a temporary git repository, through format.

Small knobs (few modules, a short base warm-up) keep it to about a minute on 2 cores; the pipeline is
the repository's own dvc.yaml and stages/.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.slow

COPY = ["dvc.yaml", "params.yaml", "stages", "expectations", "data/sources/README.md", ".dvcignore", ".gitignore"]


def sh(cwd: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command in `cwd` with this interpreter's tools first on PATH; `env` replaces os.environ."""
    env = (os.environ if env is None else env) | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1",
    }
    # Stages write bytecode next to their code, as on a user's machine (a __pycache__ inside a folder
    # dependency once made a fresh clone see scrape as changed; .dvcignore now leaves them out).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(cwd: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check, env=env)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def commit(project: Path, message: str) -> str:
    """Commit everything in `project` (nothing changed is fine too); returns the new revision."""
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-q", "--allow-empty", "-m", message)
    return sh(project, "git", "rev-parse", "HEAD").stdout.strip()


def set_params(project: Path, **dotted) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for key, value in dotted.items():
        node = params
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        assert leaf in node, key
        node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def new_project(project: Path, knobs: dict) -> Path:
    """A git + DVC repository in `project` holding this repository's pipeline, `knobs` set, committed.

    The DVC config is the repository's own (analytics off, the default remote next to the project).
    """
    repo = Path(__file__).resolve().parent.parent
    for rel in COPY:
        src, dst = repo / rel, project / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    sh(project, "git", "init", "-q", "-b", "main")
    sh(project, "git", "config", "user.email", "ci@example.com")
    sh(project, "git", "config", "user.name", "ci")
    dvc(project, "init", "-q")
    shutil.copy2(repo / ".dvc/config", project / ".dvc/config")
    set_params(project, **knobs)
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "project")
    return project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return new_project(tmp_path_factory.mktemp("project"), {
        "scrape.pydoc.modules": ["json", "csv", "pathlib", "textwrap", "heapq"],
        "base.warmup_steps": 10, "base.vocab_size": 1024, "base.warmup_seq_len": 64, "validate.min_rows": 20,
    })


def test_repro_runs_the_data_half_end_to_end(project):
    out = dvc(project, "repro", "format")  # the data half; the model half has its own test file
    assert ran_stages(out.stdout) == ["scrape", "clean", "validate", "base", "format"]
    metrics = {m: json.loads((project / "metrics" / f"{m}.json").read_text())
               for m in ("scrape", "clean", "validate", "format")}
    assert metrics["scrape"]["docs"] == metrics["clean"]["docs_in"] > 80
    assert metrics["clean"]["pairs_out"] > 200
    rows = sum(metrics["format"]["rows_per_split"].values())
    assert rows + sum(metrics["format"]["dropped"].values()) == metrics["clean"]["pairs_out"]
    train = pq.read_table(project / "data/format/train.parquet")
    assert train.num_rows > 0.7 * rows
    text = train.column("text")[0].as_py()
    assert text.startswith("<|start|>user<|message|>") and text.endswith("<|return|>")
    openai_line = (project / "data/format/openai/train.jsonl").read_text().splitlines()[0]
    assert [m["role"] for m in json.loads(openai_line)["messages"]] == ["user", "assistant"]
    assert (project / "reports/validate.md").exists()
    sh(project, "git", "add", "-A")
    sh(project, "git", "commit", "-qm", "repro")
    # git tracks no pipeline data: DVC does.
    tracked = sh(project, "git", "ls-files", "data", "models").stdout.split()
    assert all(p.endswith((".gitignore", "README.md")) for p in tracked), tracked


def test_second_repro_runs_nothing(project):
    out = dvc(project, "repro", "format")
    assert ran_stages(out.stdout) == []
    assert "Data and pipelines are up to date" in out.stdout


def test_a_clean_knob_reruns_clean_and_what_follows_not_scrape(project):
    set_params(project, **{"clean.min_chars": 250})
    out = dvc(project, "repro", "format")
    assert ran_stages(out.stdout) == ["clean", "validate", "base", "format"]
    assert "Stage 'scrape' didn't change, skipping" in out.stdout


def test_a_failing_gate_stops_the_dag_naming_expectations(project):
    set_params(project, **{"validate.min_rows": 10**6})
    out = dvc(project, "repro", check=False)
    assert out.returncode != 0
    assert "expect_table_row_count_to_be_between" in out.stderr + out.stdout
    assert "Running stage 'format'" not in out.stdout
    assert not (project / "data/validated/pairs.parquet").exists()
    set_params(project, **{"validate.min_rows": 20})
