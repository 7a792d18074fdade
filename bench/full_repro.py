"""The whole DAG on the embedded default, timed the way a user meets it: `git clone`, `dvc repro`.

    python bench/full_repro.py --force --noop-runs 10 --out bench/results/full_repro.json   # make bench-repro
    python bench/full_repro.py --workdir /tmp/r --noop-runs 10
    python bench/full_repro.py --smoke     # a two-stage toy DVC project instead of this one: seconds

Clones this repository (committed state) into a temporary folder, runs `dvc repro` there with this
interpreter's environment (install excluded: the goal is about the pipeline), then `dvc repro` again
`--noop-runs` times with nothing changed. Reports wall seconds of the full run and of each stage (from
dvc's own "Running stage" lines, timed as they appear), the no-op runs (median and max), and what the
model half measured: CPU training tokens/s and base vs adapter loss, perplexity, chrF and stop rate.

Goals (bench/goals.py): a fresh `make repro` within 12 minutes including the install, which this bench
does not time (it needs the network): what the pipeline leaves of the 12 minutes is the install's share;
no-op repro <= 1 s. `--force` runs every stage (`dvc repro -f`), as a machine whose adapter bytes differ
from the lock's does (evaluate is skipped otherwise).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import goals
from record import Recorder, git_state

REPO = Path(__file__).resolve().parent.parent
# The smoke run's project: two stages named as the real DAG's last two, writing the metrics files this
# bench reads, so every line of the measuring code runs, in seconds.
TOY_STAGE = """import json, pathlib, sys
metrics = {"train": {"steps": 2, "base_val_loss": 3.0, "val_loss": 2.0}, "evaluate": {"loss_ratio": 0.7}}
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path(f"metrics/{sys.argv[1]}.json").write_text(json.dumps(metrics[sys.argv[1]]))
"""
TOY_DVC_YAML = """stages:
  train:
    cmd: python stage.py train
    deps: [stage.py]
    outs: [{metrics/train.json: {cache: false}}]
  evaluate:
    cmd: python stage.py evaluate
    deps: [stage.py, metrics/train.json]
    outs: [{metrics/evaluate.json: {cache: false}}]
"""


def env() -> dict:
    return os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GX_ANALYTICS_ENABLED": "false",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",  # dvc's "Running stage" lines arrive when printed, so stage times are right
    }


def timed_repro(project: Path, force: bool = False) -> tuple[float, dict[str, float]]:
    """Wall seconds of `dvc repro`, and per stage from its "Running stage" line to the next one."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *(["-f"] if force else [])], cwd=project,
                            env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages, current, started = {}, None, t0
    for line in proc.stdout:
        if line.startswith("Running stage '"):
            now = time.perf_counter()
            if current:
                stages[current] = round(now - started, 2)
            current, started = line.split("'")[1], now
    if proc.wait() != 0:
        raise SystemExit(f"dvc repro failed in {project}")
    total = time.perf_counter() - t0
    if current:
        stages[current] = round(t0 + total - started, 2)
    return total, stages


def toy_project(folder: Path) -> Path:
    """A git repository holding a two-stage DVC project (the smoke run's stand-in for this one)."""
    folder.mkdir(parents=True)
    (folder / "stage.py").write_text(TOY_STAGE)
    (folder / "dvc.yaml").write_text(TOY_DVC_YAML)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "commit", "-qm",
                 "toy"]):
        subprocess.run(cmd, cwd=folder, env=env(), check=True, capture_output=True)
    return folder


def measure(source: Path, project: Path, force: bool, noop_runs: int) -> tuple[dict, tuple]:
    """Clone `source` into `project`, `dvc repro` it, then `noop_runs` no-op runs: (what they took, the
    clone's (commit, dirty): the code measured is the clone's, whatever this checkout holds uncommitted)."""
    subprocess.run(["git", "clone", "-q", str(source), str(project)], check=True)
    code = git_state(project)
    full_s, stages = timed_repro(project, force=force)
    noop = []
    for _ in range(noop_runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env(), check=True,
                       capture_output=True)
        noop.append(time.perf_counter() - t)
    train = json.loads((project / "metrics/train.json").read_text())
    evaluate = json.loads((project / "metrics/evaluate.json").read_text())
    return {
        "forced": force,
        "full_repro_s": round(full_s, 1),
        "stage_s": stages,
        "noop_repro_s": {"median": round(statistics.median(noop), 3), "max": round(max(noop), 3),
                         "runs": noop_runs},
        "train": {k: train[k] for k in ("steps", "base_val_loss", "val_loss")},
        "evaluate": evaluate,
    }, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="results JSON (bench/record.py)")
    parser.add_argument("--workdir", type=Path, help="clone here and keep it (default: a temporary folder)")
    parser.add_argument("--noop-runs", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="dvc repro -f: every stage runs")
    parser.add_argument("--smoke", action="store_true", help="a two-stage toy project, one no-op run")
    args = parser.parse_args()
    recorder = Recorder("full_repro", smoke=args.smoke)

    with tempfile.TemporaryDirectory() as tmp:
        source = toy_project(Path(tmp) / "toy") if args.smoke else REPO
        project = args.workdir or Path(tmp) / "webtune"
        result, code = measure(source, project, args.force, 1 if args.smoke else args.noop_runs)
    budget, noop_goal = goals.target("make_repro_s"), goals.target("noop_repro_s")
    left = budget - result["full_repro_s"]
    print(f"full repro {result['full_repro_s']} s (install not timed: {left:.0f} s "
          f"of the {budget:.0f} s goal left for it); no-op median {result['noop_repro_s']['median']} s "
          f"(goal <= {noop_goal:g} s)", file=sys.stderr)
    recorder.save(args.out, result, code=None if args.smoke else code)  # smoke: a toy, not this code


if __name__ == "__main__":
    main()
