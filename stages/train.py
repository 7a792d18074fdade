"""train: a LoRA adapter on the base, trained on the formatted chat rows by the selected backend.

    python -m stages.train --base models/base --train data/format/train.parquet --val data/format/val.parquet
        --checkpoints models/checkpoints --out models/adapter --mask-report reports/train_mask.md
        --live-dir reports/train --openai-dir data/format/openai --metrics metrics/train.json

`train.backend` trains (webtune.training: `hf` is transformers + PEFT + TRL, `unsloth` swaps in Unsloth's
loading and LoRA, `auto` picks one of them, `openai` fine-tunes on the host), every one through the same
seam: the backend's job (the data checked, the mask report written, the run's state found), its fit,
its metrics, and the adapter folder it writes.
- The local backends (webtune.training.local) tokenize every row through the base's chat format and
  refuse a row that trains nothing or trains a token outside an assistant turn; a killed run resumes
  from its last complete checkpoint to a bit-identical adapter (weights, tokenizer, model card).
- `openai` uploads the format stage's JSONL, and a killed run resumes the same upload and job (never
  paying twice); its adapter folder names the `ft:` model (hosted.json).
One run at a time per checkpoints folder (a lock). The adapter folder is renamed into place only when
everything passed; a NaN/inf loss stops with exit 1 and no adapter.
"""

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from webtune import errors, io
from webtune.params import load_section
from webtune.training import AUTO, Inputs, TrainParams, distributed, get_backend
from webtune.training import run as runs
from webtune.training.unsloth import resolve

STAGE = "train"


def train(*, params: TrainParams, max_length: int, base_dir: Path, train_path: Path, val_path: Path,
          checkpoints: Path, out: Path, mask_report_path: Path, live_dir: Path, jsonl_dir: Path | None = None,
          api_key: str | None = None, progress=io.stderr) -> dict:
    """Train, check, save; return metrics. Raises TrainError (a UserError) for anything the user must fix."""
    distributed.init()  # several processes (train.hf.processes): only rank 0 writes and reports
    t0 = time.perf_counter()
    progress = progress if progress and distributed.is_main() else (lambda _line: None)
    backend = get_backend(params.backend)
    inputs = Inputs(base_dir=base_dir, train_path=train_path, val_path=val_path, jsonl_dir=jsonl_dir,
                    checkpoints=checkpoints, mask_report=mask_report_path, live_dir=live_dir,
                    max_length=max_length, api_key=api_key)
    job = backend.job(params, inputs, progress)
    fitted = backend.fit(job)
    metrics = backend.metrics(job, fitted)
    if not distributed.is_main():
        return metrics
    with io.atomic_dir(out) as tmp:
        backend.save(job, fitted, metrics, tmp)
    backend.finish(job, fitted)
    speed = f", {fitted.tokens_seen / fitted.train_seconds:,.0f} tokens/s" if fitted.train_seconds > 0 else ""
    progress(f"train: {fitted.steps} steps done in {time.perf_counter() - t0:.0f} s{speed}")
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, type=Path, help="base folder (the base stage's)")
    parser.add_argument("--train", required=True, type=Path, help="train split Parquet (the format stage's)")
    parser.add_argument("--val", required=True, type=Path, help="val split Parquet (held-out loss)")
    parser.add_argument("--checkpoints", required=True, type=Path, help="persistent checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="adapter folder to write")
    parser.add_argument("--mask-report", required=True, type=Path, help="Markdown mask report to write")
    parser.add_argument("--live-dir", required=True, type=Path, help="dvclive folder (loss curves)")
    parser.add_argument("--openai-dir", type=Path, default=None,
                        help="the format stage's OpenAI JSONL folder (train.backend openai)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        max_length = load_section("format", args.params).max_length
        asked = params.backend
        # `auto` is settled before anything else: the run (fingerprint, card) is the backend that runs.
        params = dataclasses.replace(params, backend=resolve(asked, progress=io.stderr))
        backend = get_backend(params.backend)
        # one run at a time per checkpoint folder: a second `dvc repro` or `exp run` is refused, not mixed in
        lock_path = args.checkpoints.with_name(args.checkpoints.name + ".lock")
        processes = backend.processes_to_launch(params)
        if processes and not distributed.launched():
            # this process only starts the others (each runs main again, launched) and waits for them
            with runs.exclusive_lock(lock_path):
                distributed.launch(processes, sys.argv[1:] if argv is None else argv)
            return
        backend.prepare()  # first: Unsloth must be imported before transformers
        api_key = backend.secret()  # a hosted backend's key: checked before any work
        lock = runs.exclusive_lock(lock_path) if distributed.takes_lock() else contextlib.nullcontext()
        with lock:
            metrics = train(params=params, max_length=max_length, base_dir=args.base, train_path=args.train,
                            val_path=args.val, checkpoints=args.checkpoints, out=args.out,
                            mask_report_path=args.mask_report, live_dir=args.live_dir,
                            jsonl_dir=args.openai_dir, api_key=api_key)
        distributed.leave()
        if asked == AUTO:
            metrics = {"backend": params.backend, "backend_asked": AUTO, **metrics}
        if distributed.is_main():
            io.write_json(metrics, args.metrics)


if __name__ == "__main__":
    main()
