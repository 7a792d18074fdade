"""CPU training speed of the default base (SmolLM2-135M-Instruct, LoRA): tokens/s in fp32 and bf16 autocast,
on 1 and 2 threads, with and without gradient checkpointing, and with TRL's fused LM head instead of the
train stage's full-logits loss (webtune.training.trainer.full_logits_on_cpu_or_sharded).

    python bench/cpu_train_speed.py --base models/base --train data/format/train.parquet \
        --val data/format/val.parquet --steps 20 --out bench/results/cpu_train_speed.json
    python bench/cpu_train_speed.py --smoke    # a tiny Llama built in a temp dir, two 4-step runs: seconds

Runs the train stage's own core (stages.train.train: the hf backend, TRL's loop) on the pipeline's real
rows with params.yaml's knobs, once per precision and thread count, and reads the tokens/s the stage
reports (non-padding tokens seen / seconds in the training loop; loading, the mask check and the
final save are not counted). bf16 is forced here whatever `train.hf.precision: auto` would pick, so the
number says what autocast costs or saves on this CPU; `native_bf16` says whether it has AVX-512-BF16/AMX.
Each step's seconds are kept (the stage logs every step here), and a run whose first and last thirds of
steps differ by more than 10% is flagged (`window_stable`, bench/record.py): its rate is not steady yet.
"""

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record import Recorder, window  # noqa: E402

from stages import train  # noqa: E402
from webtune import params as P  # noqa: E402
from webtune.params import load_section  # noqa: E402
from webtune.training import device, trainer  # noqa: E402


def run(args, precision: str, threads: int, checkpointing: bool, fused_head: bool) -> dict:
    params = load_section("train", args.params)
    params = P.replace(params, max_steps=args.steps, eval_steps=10**6, save_steps=10**6,
                                 logging_steps=1, eval_rows=4,
                                 hf=dataclasses.replace(params.hf, precision=precision, threads=threads,
                                                        gradient_checkpointing=checkpointing))
    lines, step_times = [], []

    def said(line: str) -> None:
        lines.append(line)
        if line.startswith("train: step "):
            step_times.append(time.perf_counter())

    shipped = trainer.full_logits_on_cpu_or_sharded
    if fused_head:  # the trainer as TRL ships it
        trainer.full_logits_on_cpu_or_sharded = lambda trainer_class: trainer_class
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            metrics = train.train(params=params, max_length=load_section("format", args.params).max_length,
                                  base_dir=args.base, train_path=args.train, val_path=args.val,
                                  checkpoints=tmp / "ckpt", out=tmp / "adapter",
                                  mask_report_path=tmp / "mask.md", live_dir=tmp / "live",
                                  progress=said)
    finally:
        trainer.full_logits_on_cpu_or_sharded = shipped  # the next run measures the stage as it ships
    speed = next(float(m.group(1).replace(",", "")) for line in lines
                 if (m := re.search(r"([\d,]+) tokens/s", line)))
    print(f"{precision} x {threads} threads, gradient checkpointing {'on' if checkpointing else 'off'}, "
          f"{'TRL fused LM head' if fused_head else 'full logits'}: "
          f"{speed:,.0f} tokens/s ({metrics['precision']} ran)", flush=True)
    return {"precision_asked": precision, "precision_ran": metrics["precision"], "threads": threads,
            "gradient_checkpointing": checkpointing,
            "loss": "trl_fused_lm_head" if fused_head else "full_logits", "steps": args.steps,
            "batch_size": params.batch_size, "tokens_per_s": round(speed, 1),
            **window([b - a for a, b in zip(step_times, step_times[1:], strict=False)])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--train", type=Path, default=Path("data/format/train.parquet"))
    parser.add_argument("--val", type=Path, default=Path("data/format/val.parquet"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", default="bf16:2,fp32:2,bf16:1,fp32:1,bf16:2:gc,bf16:2:fused,fp32:2:fused",
                        help="precision:threads[:gc][:fused], comma-separated "
                             "(gc: gradient checkpointing on; fused: TRL's fused LM head)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny Llama built in a temp dir; fp32 and bf16 with both options, 4 steps")
    args = parser.parse_args()
    recorder = Recorder("cpu_train_speed", smoke=args.smoke)
    with tempfile.TemporaryDirectory(prefix="cpu-speed-smoke-") as tmp:
        if args.smoke:
            from shapes import build

            build("tiny-llama", Path(tmp), n_rows=48)
            args.base, args.train, args.val = (Path(tmp) / name for name in ("base", "train.parquet",
                                                                             "val.parquet"))
            args.steps, args.runs = 4, "fp32:1,bf16:1:gc:fused"
        specs = [r.split(":") for r in args.runs.split(",")]
        results = [run(args, spec[0], int(spec[1]), "gc" in spec[2:], "fused" in spec[2:]) for spec in specs]
        base = json.loads((args.base / "model" / "base.json").read_text())["model"]
        report = {"native_bf16": device.native_cpu_bf16(), "base": base, "runs": results}
    recorder.save(args.out, report)


if __name__ == "__main__":
    main()
