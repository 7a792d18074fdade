"""The whole DAG on the embedded default, timed the way a user meets it: `git clone`, `dvc repro`.

    python bench/full_repro.py --out bench/full_repro.json          # ~5 minutes on 2 cores
    python bench/full_repro.py --workdir /tmp/r --noop-runs 10

Clones this repository (committed state) into a temporary folder, runs `dvc repro` there with this
interpreter's environment (install excluded: the goal is about the pipeline), then `dvc repro` again
`--noop-runs` times with nothing changed. Reports wall seconds of the full run and of each stage (from
dvc's own "Running stage" lines, timed as they appear), the no-op runs (median and max), and what the
model half measured: CPU training tokens/s and base vs adapter loss, perplexity, chrF and stop rate.

Goals (issue 10): `make repro` <= 12 minutes including install, which takes ~3 minutes on these machines,
so the pipeline's share is <= 540 s; no-op repro <= 1 s. `--force` runs every stage (`dvc repro -f`), as a
machine whose adapter bytes differ from the lock's does (evaluate is skipped otherwise).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOALS = {"full_repro_s": 540.0, "noop_repro_s": 1.0}


def cpu_model() -> str:
    """The CPU's name (Linux), since timings and bf16 results differ from one model to the next."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown CPU"
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else "unknown CPU"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON results file")
    parser.add_argument("--workdir", type=Path, help="clone here and keep it (default: a temporary folder)")
    parser.add_argument("--noop-runs", type=int, default=5)
    parser.add_argument("--force", action="store_true", help="dvc repro -f: every stage runs")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        project = args.workdir or Path(tmp) / "webtune"
        subprocess.run(["git", "clone", "-q", str(REPO), str(project)], check=True)
        full_s, stages = timed_repro(project, force=args.force)
        noop = []
        for _ in range(args.noop_runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project, env=env(), check=True,
                           capture_output=True)
            noop.append(time.perf_counter() - t)
        train = json.loads((project / "metrics/train.json").read_text())
        evaluate = json.loads((project / "metrics/evaluate.json").read_text())

    results = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "forced": args.force,
        "full_repro_s": round(full_s, 1),
        "stage_s": stages,
        "noop_repro_s": {"median": round(statistics.median(noop), 3), "max": round(max(noop), 3)},
        "train": {k: train[k] for k in ("steps", "base_val_loss", "val_loss")},
        "evaluate": evaluate,
        "goals": GOALS,
        "goals_met": {
            "full_repro_s": full_s <= GOALS["full_repro_s"],
            "noop_repro_s": statistics.median(noop) <= GOALS["noop_repro_s"],
        },
    }
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
