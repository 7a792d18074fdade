"""Multi-process training: tokens/s of the train stage on 1 and 2 processes (one per GPU), the same
per-GPU batch, Llama-3.1-8B shape built from config (issue 14: 2 GPUs >= 1.8x one GPU's tokens/s), and
what a sharded run (train.hf.sharding) fits under a per-process GPU memory budget.

    python bench/train_throughput.py build --shape llama-3.1-8b --dir /tmp/mg --rows 4000 --fixed-length 512
    python bench/train_multigpu.py --dir /tmp/mg --processes 1 2 --batch-size 4 --out train_multigpu.jsonl
    python bench/train_multigpu.py --dir /tmp/mg --processes 2 --sharding fsdp --memory-fraction 0.15 ...

--memory-fraction caps each process's GPU memory (torch's allocator setting per_process_memory_fraction,
through PYTORCH_CUDA_ALLOC_CONF) to make the point of sharding on GPUs larger than the model: a run that
does not fit is recorded with the stage's out-of-memory line instead of a rate.

Each run is `python -m stages.train` with `train.hf.processes` set, as `dvc repro` runs it (the stage
starts its processes itself). The rows all have the same length (--fixed-length at build), so a step's
tokens are processes x batch_size x their mean length (row_tokens.json); the rate is over the steps
after --warmup, timed as the stage's per-step progress lines arrive. A CPU run (tiny-llama shape, gloo)
checks the script, not the speed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from emit import emit  # bench/ is the script's folder

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^train: step (\d+)/\d+ +loss [\d.]+ +\((\d+) s\)$")


def run(folder: Path, processes: int, batch_size: int, steps: int, warmup: int, sharding: str = "none",
        memory_fraction: float = 0.0) -> dict:
    out = folder / f"run-{processes}-{sharding}-{memory_fraction:g}"
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"] |= {"max_steps": steps, "batch_size": batch_size, "grad_accum": 1, "eval_steps": 10**6,
                        "save_steps": 10**6, "logging_steps": 1, "learning_rate": 2e-4}
    params["train"]["hf"] |= {"processes": processes, "sharding": sharding}
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
    said = {"processes": processes, "sharding": sharding, "memory_fraction": memory_fraction,
            "batch_size_per_process": batch_size}
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
            "peak_gpu_gib": metrics.get("peak_gpu_gib"), "train_loss": metrics["train_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, required=True, help="a folder train_throughput.py built")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=4, help="rows per process per step")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the rate")
    parser.add_argument("--sharding", choices=["none", "fsdp", "fsdp_offload"], default="none")
    parser.add_argument("--memory-fraction", type=float, default=0.0,
                        help="each process's share of its GPU's memory (0: all of it)")
    parser.add_argument("--out", type=Path, default=None, help="append the results (JSON lines)")
    args = parser.parse_args()
    results = [run(args.dir, n, args.batch_size, args.steps, args.warmup, args.sharding, args.memory_fraction)
               for n in args.processes]
    base = results[0].get("tokens_per_s")
    for result in results:
        if base and "tokens_per_s" in result:
            result["speedup"] = round(result["tokens_per_s"] / base, 3)
        emit(result, args.out)


if __name__ == "__main__":
    main()
