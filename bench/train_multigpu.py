"""Multi-process training: tokens/s of the train stage on 1 and 2 processes (one per GPU), the same
per-GPU batch, Llama-3.1-8B shape built from config (issue 14: 2 GPUs >= 1.8x one GPU's tokens/s), and
what a sharded run (train.hf.sharding) fits under a per-process GPU memory budget.

    python bench/train_throughput.py build --shape llama-3.1-8b --dir /tmp/mg --rows 4000 --fixed-length 512
    python bench/train_multigpu.py --dir /tmp/mg --processes 1 2 --batch-size 4 \
        --out bench/results/train_multigpu.json
    python bench/train_multigpu.py --dir /tmp/mg --processes 2 --sharding fsdp --memory-fraction 0.15 ...
    python bench/train_multigpu.py --smoke     # CPU: a tiny Llama built in a temp dir, 1 process, seconds

--memory-fraction caps each process's GPU memory (torch's allocator setting per_process_memory_fraction,
through PYTORCH_CUDA_ALLOC_CONF) to make the point of sharding on GPUs larger than the model: a run that
does not fit is recorded with the stage's out-of-memory line instead of a rate.

Each run is `python -m stages.train` with `train.hf.processes` set, as `dvc repro` runs it (the stage
starts its processes itself). The rows all have the same length (--fixed-length at build), so a step's
tokens are processes x batch_size x their mean length (row_tokens.json); the rate is over the steps
after --warmup (12 of 40 by default: compilation), timed as the stage's per-step progress lines arrive,
and a window whose first and last thirds differ by more than 10% is flagged (bench/record.py). A CPU run
(tiny-llama shape, gloo) checks the script, not the speed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from record import Recorder, window  # bench/ is the script's folder

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^train: step (\d+)/\d+ +loss [\d.]+ +\((\d+) s\)$")


def run(folder: Path, processes: int, batch_size: int, steps: int, warmup: int, sharding: str = "none",
        memory_fraction: float = 0.0, threads: int | None = None) -> dict:
    out = folder / f"run-{processes}-{sharding}-{memory_fraction:g}"
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"] |= {"max_steps": steps, "batch_size": batch_size, "grad_accum": 1, "eval_steps": 10**6,
                        "save_steps": 10**6, "logging_steps": 1, "learning_rate": 2e-4}
    params["train"]["hf"] |= {"processes": processes, "sharding": sharding}
    if threads:  # the smoke run: one CPU thread, as a toy model gains nothing from two
        params["train"]["hf"]["threads"] = threads
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.train", "--base", str(folder / "base"),
           "--train", str(folder / "train.parquet"), "--val", str(folder / "val.parquet"),
           "--checkpoints", str(out / "checkpoints"), "--out", str(out / "adapter"),
           "--mask-report", str(out / "mask.md"), "--live-dir", str(out / "live"),
           "--metrics", str(out / "metrics.json"), "--params", str(out / "params.yaml")]
    # each step's line is timed as it arrives (stderr is line-buffered; the line's own clock is in whole s)
    times, lines = {}, []
    env = dict(os.environ)
    if memory_fraction:
        env["PYTORCH_CUDA_ALLOC_CONF"] = f"per_process_memory_fraction:{memory_fraction}"
    with subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                          env=env) as stage:
        for line in stage.stderr:
            lines.append(line)
            if match := STEP_LINE.match(line.rstrip("\n")):
                times[int(match[1])] = time.monotonic()
    shape = json.loads((folder / "base" / "model" / "base.json").read_text())["model"]
    said = {"shape": shape, "processes": processes, "sharding": sharding, "memory_fraction": memory_fraction,
            "batch_size_per_process": batch_size, "steps": steps, "warmup": warmup}
    if stage.returncode != 0:
        said_oom = [line.strip() for line in lines if "out of GPU memory" in line]
        if said_oom:  # the point of a memory budget: recorded, not fatal
            return {**said, "failed": said_oom[0]}
        raise SystemExit(f"{processes} processes: the train stage failed:\n{''.join(lines[-30:])}")
    tokens = json.loads((folder / "row_tokens.json").read_text())["tokens_per_row"]
    seconds = times[steps] - times[warmup]
    tokens_per_s = (steps - warmup) * processes * batch_size * tokens / seconds
    metrics = json.loads((out / "metrics.json").read_text())
    return {**said, "timed_steps": steps - warmup, "seconds": round(seconds, 3),
            "tokens_per_row": round(tokens, 1), "tokens_per_s": round(tokens_per_s),
            "peak_gpu_gib": metrics.get("peak_gpu_gib"), "train_loss": metrics["train_loss"],
            **window([times[i + 1] - times[i] for i in range(warmup, steps)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, help="a folder train_throughput.py built (not with --smoke)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4, help="rows per process per step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=12, help="steps left out of the rate")
    parser.add_argument("--sharding", choices=["none", "fsdp", "fsdp_offload"], default="none")
    parser.add_argument("--memory-fraction", type=float, default=0.0,
                        help="each process's share of its GPU's memory (0: all of it)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (bench/record.py): replaces the record of the same shape, "
                             "processes, sharding and memory fraction")
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama on the CPU, 1 process, 8 steps")
    args = parser.parse_args()
    recorder = Recorder("train_multigpu", smoke=args.smoke)
    with tempfile.TemporaryDirectory(prefix="multigpu-smoke-") as tmp:
        if args.smoke:
            from shapes import build

            args.dir, args.processes, args.steps, args.warmup = Path(tmp), [1], 8, 2
            build("tiny-llama", args.dir, n_rows=64, fixed_length=64)
        elif args.dir is None:
            parser.error("--dir is required (a folder train_throughput.py built)")
        results = [run(args.dir, n, args.batch_size, args.steps, args.warmup, args.sharding,
                       args.memory_fraction, threads=1 if args.smoke else None) for n in args.processes]
    base = results[0].get("tokens_per_s")
    for result in results:
        if base and "tokens_per_s" in result:
            result["speedup"] = round(result["tokens_per_s"] / base, 3)
        args.out = recorder.save(args.out, result,
                                 key=("shape", "processes", "sharding", "memory_fraction")) or args.out


if __name__ == "__main__":
    main()
