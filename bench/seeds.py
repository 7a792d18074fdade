"""Seed noise of what evaluate reports: the embedded default trained with several `train.seed` values.

    python bench/seeds.py --seeds 3407 1 2 --out bench/results/seeds.json     # make bench-seeds
    python bench/seeds.py --smoke     # a toy DVC project whose metrics depend on the seed: seconds

Clones this repository (committed state) into a temporary folder, points the clone at this checkout's
DVC cache so the stages before train are checked out rather than re-run, then for each seed runs
`dvc exp run -S train.seed=<seed> -S evaluate.gate=warn` (the gate only warns, so a seed whose adapter
the gate would refuse is still measured) and reads the experiment's metrics/evaluate.json. Records, per
seed, every adapter/base ratio and every difference with its interval and verdict; over the seeds, the
mean and sample standard deviation of each ratio and of each difference, and how many seeds gave each
verdict. One interval comes from one seed's test rows; the spread over seeds is the training noise the
interval does not see.
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

from record import Recorder, git_state

REPO = Path(__file__).resolve().parent.parent
TOY_STAGE = """import json, pathlib, sys, yaml
seed = yaml.safe_load(open("params.yaml"))["train"]["seed"]
loss = 2.0 + (seed % 7) / 100
ev = {"ratio": {"loss": round(loss / 3.0, 6)},
      "delta": {"loss": {"value": round(loss - 3.0, 6), "low": round(loss - 3.1, 6),
                         "high": round(loss - 2.9, 6), "verdict": "adapter"}},
      "gate": {"passed": True}}
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/evaluate.json").write_text(json.dumps(ev))
"""
TOY_DVC_YAML = """stages:
  evaluate:
    cmd: python stage.py
    deps: [stage.py]
    params: [train.seed, evaluate.gate]
    metrics: [{metrics/evaluate.json: {cache: false}}]
"""
TOY_PARAMS = "train:\n  seed: 1\nevaluate:\n  gate: fail\n"


def env() -> dict:
    return os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "GX_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1",
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.org",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.org",
    }


def run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"seeds: {' '.join(cmd)} failed in {cwd}:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}")


def toy_project(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "stage.py").write_text(TOY_STAGE)
    (folder / "dvc.yaml").write_text(TOY_DVC_YAML)
    (folder / "params.yaml").write_text(TOY_PARAMS)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "toy"]):
        run(cmd, folder)
    return folder


def clone(source: Path, project: Path, share_cache: bool) -> tuple:
    run(["git", "clone", "-q", str(source), str(project)], project.parent)
    if share_cache:  # every output the lock names is already in this checkout's cache: no scrape, no clean
        run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(source / ".dvc" / "cache")], project)
        subprocess.run([sys.executable, "-m", "dvc", "checkout", "-q"], cwd=project, env=env(),
                       capture_output=True)  # a missing output is simply re-run by the experiment
    return git_state(project)


def spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 6),
            "sd": round(statistics.stdev(values), 6) if len(values) > 1 else None, "n": len(values)}


def summarize(per_seed: dict[str, dict]) -> dict:
    """Over the seeds: mean and sd of each ratio and difference, and the verdict counts per metric."""
    runs = list(per_seed.values())
    ratios = sorted({k for r in runs for k in r["ratio"]})
    deltas = sorted({k for r in runs for k in r["delta"]})
    return {
        "ratio": {k: spread([r["ratio"][k] for r in runs if r["ratio"].get(k) is not None]) for k in ratios},
        "delta": {k: spread([r["delta"][k]["value"] for r in runs if k in r["delta"]]) for k in deltas},
        "verdicts": {k: {v: sum(r["delta"].get(k, {}).get("verdict") == v for r in runs)
                         for v in ("adapter", "neither", "base")} for k in deltas},
        "gate_passed": sum(bool((r.get("gate") or {}).get("passed")) for r in runs),
    }


def measure(project: Path, seeds: list[int]) -> dict:
    per_seed, seconds = {}, {}
    for seed in seeds:
        start = time.perf_counter()
        run([sys.executable, "-m", "dvc", "exp", "run", "-S", f"train.seed={seed}",
             "-S", "evaluate.gate=warn"], project)
        seconds[str(seed)] = round(time.perf_counter() - start, 1)
        metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
        per_seed[str(seed)] = {k: metrics.get(k) for k in ("ratio", "delta", "gate", "verdict")}
        print(f"seeds: seed {seed} in {seconds[str(seed)]} s: {metrics.get('verdict')}", file=sys.stderr)
    return {"seeds": seeds, "per_seed": per_seed, "run_s": seconds, "over_seeds": summarize(per_seed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3407, 1, 2])
    parser.add_argument("--out", type=Path, help="results JSON (bench/record.py)")
    parser.add_argument("--workdir", type=Path, help="clone here and keep it (default: a temporary folder)")
    parser.add_argument("--smoke", action="store_true", help="a one-stage toy project, seeds 1 2 3")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds: at least two, or there is no spread to measure")
    recorder = Recorder("seeds", smoke=args.smoke)
    with tempfile.TemporaryDirectory() as tmp:
        source = toy_project(Path(tmp) / "toy") if args.smoke else REPO
        project = args.workdir or Path(tmp) / "webtune"
        code = clone(source, project, share_cache=not args.smoke)
        result = measure(project, [1, 2, 3] if args.smoke else args.seeds)
    for name, s in result["over_seeds"]["ratio"].items():
        print(f"seeds: {name} ratio {s['mean']:.4f} ± {s['sd'] or 0:.4f} over {s['n']} seeds",
              file=sys.stderr)
    recorder.save(args.out, result, code=None if args.smoke else code)


if __name__ == "__main__":
    main()
