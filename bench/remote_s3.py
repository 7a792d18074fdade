"""Push and pull of the embedded default's versioned files through S3, timed the way a user meets them.

    python bench/remote_s3.py --out bench/results/remote_s3.json   # make bench-remote (after make repro)
    python bench/remote_s3.py --smoke    # a toy DVC project with one small tracked folder, one run: seconds

S3 is moto's server on 127.0.0.1 (real HTTP, dvc-s3 as in production; no network latency, so these
are DVC's and dvc-s3's own costs, the floor of what a real bucket gives). A `git clone` of this
repository (committed state) is pointed at a fresh bucket with `webtune.cli.remote use-s3`, then, each
`--runs` times:
- `dvc push` of HEAD's datasets, base and adapter, read from this workspace's DVC cache;
- `dvc push` again, nothing to send;
- `dvc pull` into an empty cache and workspace, and the same with `python -m webtune.cli.remote pull`
  (`make pull`: fetch, completeness check, checkout), whose extra cost is the check.
Reports median wall seconds and the files and bytes moved. At this size a no-op push shows DVC's fixed
cost (start-up, index, listing): most of every number here.
"""

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer
from record import Recorder

REPO = Path(__file__).resolve().parent.parent
OUTPUTS = ["data/raw", "data/clean", "data/validated", "data/format", "models/base", "models/adapter",
           "models/checkpoints"]


def env() -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return clean | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                    "AWS_EC2_METADATA_DISABLED": "true", "DVC_NO_ANALYTICS": "1"}


def timed(project: Path, *args: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], cwd=project, env=env(), capture_output=True,
                          text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout


def empty_workspace(project: Path, outputs: list[str]) -> None:
    for out in outputs:
        shutil.rmtree(project / out, ignore_errors=True)
    shutil.rmtree(project / ".dvc/cache", ignore_errors=True)


def toy_project(folder: Path) -> Path:
    """A git repository with DVC tracking one small folder, data/raw (the smoke run's stand-in)."""
    (folder / "data/raw").mkdir(parents=True)
    for i in range(3):
        (folder / f"data/raw/part-{i}.txt").write_text(f"toy file {i}\n" * 100)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "add", "-q", "data/raw"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.org", "commit", "-qm",
                 "toy"]):
        subprocess.run(cmd, cwd=folder, env=env(), check=True, capture_output=True)
    return folder


def measure(source: Path, outputs: list[str], runs: int) -> dict:
    """Push `source`'s committed outputs from its DVC cache to moto's S3 `runs` times, and pull them
    back into an empty clone; median seconds of each step."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
    times: dict[str, list[float]] = {"push": [], "noop_push": [], "dvc_pull": [], "make_pull": []}
    with tempfile.TemporaryDirectory(prefix="webtune-s3-bench-") as tmp:
        project = Path(tmp) / "project"
        subprocess.run(["git", "clone", "-q", str(source), str(project)], check=True)
        for run in range(runs):
            bucket = f"webtune-bench-{run}"
            s3.create_bucket(Bucket=bucket)
            timed(project, "webtune.cli.remote", "use-s3", f"s3://{bucket}/dvc", "--endpoint", endpoint)
            # Push from the source's cache: the clone has HEAD's dvc.lock and nothing else.
            timed(project, "dvc", "config", "--local", "cache.dir", str(source / ".dvc/cache"))
            seconds, out = timed(project, "dvc", "push")
            times["push"].append(seconds)
            files = int(out.split(" file")[0].split()[-1])
            times["noop_push"].append(timed(project, "dvc", "push")[0])
            timed(project, "dvc", "config", "--local", "--unset", "cache.dir")
            for name, command in (("dvc_pull", ("dvc", "pull")),
                                  ("make_pull", ("webtune.cli.remote", "pull"))):
                empty_workspace(project, outputs)
                times[name].append(timed(project, *command)[0])
                missing = [out for out in outputs if not (project / out).exists()]
                if missing:
                    raise SystemExit(f"{' '.join(command)} did not bring back {missing}")
        pushed_bytes = sum(obj["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                           for obj in page.get("Contents", []))
    moto.stop()
    return {"files": files, "megabytes": round(pushed_bytes / 1e6, 2), "runs": runs,
            "median_seconds": {name: round(statistics.median(values), 2) for name, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="results JSON (bench/record.py)")
    parser.add_argument("--smoke", action="store_true", help="a toy project, one run")
    args = parser.parse_args()
    recorder = Recorder("remote_s3", smoke=args.smoke)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="webtune-s3-smoke-") as tmp:
            result = measure(toy_project(Path(tmp) / "toy"), ["data/raw"], runs=1)
    else:
        if not (REPO / "models/adapter").exists():
            raise SystemExit("no outputs in this workspace: run `make repro` first")
        result = measure(REPO, OUTPUTS, args.runs)
    recorder.save(args.out, result)


if __name__ == "__main__":
    main()
