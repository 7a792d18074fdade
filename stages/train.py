"""train: a LoRA adapter on the base, trained on the formatted chat rows by the selected backend.

    python -m stages.train --base models/base --train data/format/train.parquet --val data/format/val.parquet
        --checkpoints models/checkpoints --out models/adapter --mask-report reports/train_mask.md
        --live-dir reports/train --metrics metrics/train.json

rows -> supervision gate -> the backend's fit -> adapter + model card:
1. every row is tokenized through the base's chat format and its supervised tokens are read from the ids
   (webtune.training.supervision); the mask report is written, and a row that trains nothing or trains a
   token outside an assistant turn stops the stage naming the rows;
2. the run's fingerprint, lock and checkpoints (webtune.training.run) are the same for every backend: a
   killed run resumes from its last complete checkpoint, and the data order (batch_size rows a step, or
   a backend's token-budget micro-batches: webtune.training.batching) is a pure function of train.seed,
   so a resumed adapter is bit-identical to an uninterrupted one;
3. `train.backend` fits (webtune.training: `hf` is transformers + PEFT + TRL, `unsloth` swaps in Unsloth's
   loading and LoRA, `auto` picks one of them); a hosted backend (`openai`)
   instead uploads the format stage's JSONL and fine-tunes on the host (train_hosted: no base is loaded);
4. the adapter folder (weights, tokenizer, model card with lineage) is renamed into place only when
   everything passed; a NaN/inf loss stops with exit 1 and no adapter.
"""

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from webtune import errors, io
from webtune.params import load_section
from webtune.training import (
    AUTO,
    FitJob,
    TrainError,
    TrainParams,
    batching,
    distributed,
    get_backend,
)
from webtune.training import run as runs
from webtune.training.card import canonical_adapter_config, model_card
from webtune.training.supervision import encode_rows, mask_report, render_mask_report
from webtune.training.unsloth import resolve

STAGE = "train"


def train_hosted(backend, *, params: TrainParams, openai_dir: Path, checkpoints: Path, out: Path,
                 mask_report_path: Path, live_dir: Path, client, progress=io.stderr) -> dict:
    """A hosted backend's run (train.backend openai): the format stage's JSONL -> a fine-tuned model id.

    The adapter folder names the hosted model (hosted.json) and carries its card; the job's loss curve
    becomes the dvclive curve the local backends draw; the mask report says what the host trains.
    """
    from dvclive import Live

    from webtune.models import HOSTED_FILE
    from webtune.training.openai import hosted_record

    result = backend.run(params=params, train_jsonl=openai_dir / "train.jsonl",
                         val_jsonl=openai_dir / "val.jsonl", state_dir=checkpoints, client=client,
                         progress=progress)
    live = Live(dir=str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None)
    for point in result.curve:
        live.step = point["step"]
        for key, name in (("train_loss", "train/loss"), ("valid_loss", "eval/loss")):
            if key in point:
                live.log_metric(name, point[key])
    live.make_summary()
    io.write_text(f"# train: what is supervised\n\nBackend {backend.name}: the host trains every assistant "
                  f"message of {openai_dir / 'train.jsonl'} (weight 1; the format stage writes no weight 0). "
                  "The local mask report applies to the local backends.\n", mask_report_path)
    record = hosted_record(result, params.openai)
    last = result.curve[-1] if result.curve else {}
    metrics = {"backend": backend.name, "fine_tuned_model": result.fine_tuned_model, "job_id": result.job_id,
               "trained_tokens": result.trained_tokens, "steps": last.get("step", 0),
               "train_loss": last.get("train_loss"), "val_loss": last.get("valid_loss"), "device": "hosted"}
    with io.atomic_dir(out) as tmp:
        (tmp / HOSTED_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        (tmp / "README.md").write_text(
            f"# {result.fine_tuned_model}\n\nA hosted fine-tune of {params.openai.model} ({backend.name}), "
            f"job {result.job_id}, {result.trained_tokens or 0:,} trained tokens. Chat with it:\n\n"
            f"    python -m webtune.cli.chat --hosted {result.fine_tuned_model}\n\n"
            f"```json\n{json.dumps(metrics, indent=2, sort_keys=True)}\n```\n")
    progress(f"train: {result.fine_tuned_model} ({result.trained_tokens or 0:,} trained tokens)")
    return metrics


def train(*, params: TrainParams, max_length: int, base_dir: Path, train_path: Path, val_path: Path,
          checkpoints: Path, out: Path, mask_report_path: Path, live_dir: Path, progress=io.stderr) -> dict:
    """Train, check, save; return metrics. Raises TrainError (a UserError) for anything the user must fix."""
    distributed.init()  # several processes (train.hf.processes): only rank 0 writes and reports
    main_process = distributed.is_main()
    t0 = time.perf_counter()
    progress = progress if progress and main_process else (lambda _line: None)
    backend = get_backend(params.backend)
    # The splits first: a bad file fails in a second, not after loading the base (minutes for a big one).
    train_ids, train_rows = io.read_chat_rows(train_path)
    val_ids, val_rows = io.read_chat_rows(val_path)
    if params.eval_rows:  # the first N: the same rows at every eval step and in every run
        val_ids, val_rows = val_ids[: params.eval_rows], val_rows[: params.eval_rows]
    if not train_rows:
        raise TrainError(f"{train_path} has no rows to train on")
    base = backend.load(base_dir, params, max_length=max_length)
    data_md5 = {str(train_path): runs.file_md5(train_path), str(val_path): runs.file_md5(val_path)}
    fingerprint = runs.run_fingerprint(params, base.info, data_md5, max_length)
    encode = dict(channels=params.channels, turns=params.assistant_turns, max_length=max_length)
    train_enc = encode_rows(base.chat_format, base.tokenizer, train_ids, train_rows, **encode)
    val_enc = encode_rows(base.chat_format, base.tokenizer, val_ids, val_rows, **encode) if val_rows else None

    report = mask_report(base.chat_format, base.tokenizer, train_enc.pair_ids, train_enc.input_ids,
                         train_enc.labels(), params.mask_report_rows)
    if main_process:
        io.write_text(render_mask_report(report, params), mask_report_path)
    if report.problems():
        raise TrainError(f"refusing to train: {report.problems()} (see {mask_report_path})")

    resume_from = runs.prepare_checkpoints(checkpoints, fingerprint, progress) if main_process else None
    resume_from = distributed.from_main(resume_from)  # the others wait for rank 0's cleanup
    if resume_from is not None:
        progress(f"train: resuming from {resume_from.name}")
    if main_process:
        runs.restore_live(resume_from, live_dir)
    plan = batching.plan_run(params, backend, base, [len(ids) for ids in train_enc.input_ids], progress,
                             processes=distributed.world_size())
    progress(f"train: {report.rows} rows, {report.trained_tokens:,} of {report.tokens:,} tokens trained "
             f"({report.trained_share:.1%}); {plan.total_steps} steps, backend {backend.name}")
    fitted = backend.fit(base, FitJob(train=train_enc, val=val_enc, order=plan.order,
                                      total_steps=plan.total_steps, max_length=max_length, params=params,
                                      checkpoints=checkpoints, resume_from=resume_from, live_dir=live_dir,
                                      progress=progress, micro_batches=plan.micro_batches,
                                      padding_free=plan.padding_free))

    metrics = {
        "steps": fitted.steps,
        "resumed_from_step": runs.step_of(resume_from) if resume_from else 0,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        # the train split's supervised tokens (the mask report's count), not the tokens the steps saw
        "train_supervised_tokens": report.trained_tokens,
        "train_supervised_share": round(report.trained_share, 6),
        "train_loss": round(fitted.train_loss, 6),
        "device": fitted.device,
        "precision": fitted.precision,
        **plan.summary(),
    }
    if fitted.peak_gpu_gib is not None:
        metrics["peak_gpu_gib"] = fitted.peak_gpu_gib
    for key in ("val_loss", "base_val_loss"):
        value = getattr(fitted, key)
        if value is not None and not math.isfinite(value):
            raise TrainError(f"{key} is {value} after training: no adapter was written")
        if value is not None:
            metrics[key] = round(value, 6)

    if not main_process:
        return metrics
    with io.atomic_dir(out) as tmp:
        fitted.model.save_pretrained(tmp, state_dict=fitted.adapter_state)
        canonical_adapter_config(tmp / "adapter_config.json")
        base.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(params=params, base_info=base.info,
                                                  chat_format=base.chat_format, data_md5=data_md5,
                                                  metrics=metrics, device=fitted.device.upper()))
    runs.finish_checkpoints(checkpoints, fingerprint, fitted.steps)
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
        if getattr(backend, "hosted", False):
            from webtune.training.openai import client_for, require_key

            if args.openai_dir is None:
                raise errors.UserError(f"train.backend {params.backend} needs --openai-dir (format's JSONL)")
            client = client_for(params.openai, require_key())  # the key is checked before any work
            with runs.exclusive_lock(lock_path):
                metrics = train_hosted(backend, params=params, openai_dir=args.openai_dir,
                                       checkpoints=args.checkpoints, out=args.out,
                                       mask_report_path=args.mask_report, live_dir=args.live_dir,
                                       client=client)
            io.write_json(metrics, args.metrics)
            return
        processes = backend.processes_to_launch(params)
        if processes and not distributed.launched():
            # this process only starts the others (each runs main again, launched) and waits for them
            with runs.exclusive_lock(lock_path):
                distributed.launch(processes, sys.argv[1:] if argv is None else argv)
            return
        backend.prepare()  # first: Unsloth must be imported before transformers
        lock = runs.exclusive_lock(lock_path) if distributed.takes_lock() else contextlib.nullcontext()
        with lock:
            metrics = train(params=params, max_length=max_length, base_dir=args.base, train_path=args.train,
                            val_path=args.val, checkpoints=args.checkpoints, out=args.out,
                            mask_report_path=args.mask_report, live_dir=args.live_dir)
        if asked == AUTO:
            metrics = {"backend": params.backend, "backend_asked": AUTO, **metrics}
        if distributed.is_main():
            io.write_json(metrics, args.metrics)


if __name__ == "__main__":
    main()
