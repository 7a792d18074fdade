"""Helpers of the end-to-end tests: a git + DVC project holding this repository's pipeline, and commands
in it."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COPY = ["dvc.yaml", "params.yaml", "stages", "webtune", "expectations", "data/sources/README.md",
        ".dvcignore", ".gitignore"]
ALL_STAGES = ["scrape", "clean", "validate", "base", "format", "train", "evaluate"]


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


def changed_stages(project: Path) -> list[str]:
    """The stages `dvc status` reports as changed (their own deps, params or outputs), in DAG order."""
    out = dvc(project, "status").stdout
    names = {line.rstrip(":").strip() for line in out.splitlines() if line and not line.startswith("\t")
             and line.rstrip().endswith(":")}
    return [s for s in ALL_STAGES if s in names]


def new_project(project: Path, knobs: dict) -> Path:
    """A git + DVC repository in `project` holding this repository's pipeline, `knobs` set, committed.

    The DVC config is the repository's own (analytics off, the default remote next to the project).
    """
    for rel in COPY:
        src, dst = REPO / rel, project / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    sh(project, "git", "init", "-q", "-b", "main")
    sh(project, "git", "config", "user.email", "ci@example.com")
    sh(project, "git", "config", "user.name", "ci")
    dvc(project, "init", "-q")
    shutil.copy2(REPO / ".dvc/config", project / ".dvc/config")
    set_params(project, **knobs)
    commit(project, "project")
    return project


def copy_project(project: Path, dest: Path) -> Path:
    """An independent copy of a built project (git history, DVC cache and workspace), for a test that
    changes it.

    The default remote (`../webtune-dvc-storage`) is relative to the project, so the copy has its own.
    """
    shutil.copytree(project, dest, symlinks=True)
    return dest
