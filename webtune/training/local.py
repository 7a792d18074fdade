"""What the local backends (hf, unsloth) share around their fit: rows -> supervision gate -> fit -> adapter.

1. the splits are read first (a bad file fails in a second, not after loading the base), then the base
   (the backend's own load); every row is tokenized through the base's chat format and its supervised
   tokens are read from the ids (webtune.training.supervision); the mask report is written, and a row
   that trains nothing or trains a token outside an assistant turn stops the run naming the rows;
2. the run's fingerprint, checkpoints and resume (webtune.training.run): a killed run resumes from its
   last complete checkpoint, and the data order (batch_size rows a step, or the backend's token-budget
   micro-batches: webtune.training.batching) is a pure function of train.seed, so a resumed adapter is
   bit-identical to an uninterrupted one;
3. after the fit, metrics/train.json, and the adapter folder: weights, tokenizer and the model card with
   its lineage (webtune.training.card); a NaN/inf loss stops with exit 1 and no adapter. With several
   processes (train.hf.processes) only rank 0 writes.
"""

import math
from collections.abc import Callable
from pathlib import Path

from webtune import io
from webtune.training import Backend, FitJob, Fitted, Inputs, TrainError, batching, distributed
from webtune.training import run as runs
from webtune.training.card import canonical_adapter_config, model_card
from webtune.training.supervision import encode_rows, mask_report, render_mask_report


class LocalBackend(Backend):
    """A backend that trains the LoRA here, on the base's weights."""

    def load(self, base_dir: Path, params, max_length: int | None = None):
        """The base to train on (model, tokenizer, chat format); max_length: format.max_length."""
        from webtune.models import load_base

        return load_base(base_dir)

    def batching(self, params) -> tuple[int, str]:
        """(tokens per micro-batch, 0 = train.batch_size rows; layout: auto | padded | padding_free)."""
        return 0, "padded"

    def packing_probe(self, base):
        """webtune.models.packing.Probe: may rows be laid end to end in this model?"""
        from webtune.models.packing import probe_packing

        return probe_packing(base.model, base.tokenizer)

    def job(self, params, inputs: Inputs, progress: Callable[[str], None]) -> FitJob:
        main_process = distributed.is_main()
        train_ids, train_rows = io.read_chat_rows(inputs.train_path)
        val_ids, val_rows = io.read_chat_rows(inputs.val_path)
        if params.eval_rows:  # the first N: the same rows at every eval step and in every run
            val_ids, val_rows = val_ids[: params.eval_rows], val_rows[: params.eval_rows]
        if not train_rows:
            raise TrainError(f"{inputs.train_path} has no rows to train on")
        max_length = inputs.max_length
        base = self.load(inputs.base_dir, params, max_length=max_length)
        data_md5 = {str(inputs.train_path): runs.file_md5(inputs.train_path),
                    str(inputs.val_path): runs.file_md5(inputs.val_path)}
        fingerprint = runs.run_fingerprint(params, base.info, data_md5, max_length)
        encode = dict(channels=params.channels, turns=params.assistant_turns, max_length=max_length)
        train_enc = encode_rows(base.chat_format, base.tokenizer, train_ids, train_rows, **encode)
        val_enc = (encode_rows(base.chat_format, base.tokenizer, val_ids, val_rows, **encode) if val_rows
                   else None)

        report = mask_report(base.chat_format, base.tokenizer, train_enc.pair_ids, train_enc.input_ids,
                             train_enc.labels(), params.mask_report_rows)
        if main_process:
            io.write_text(render_mask_report(report, params), inputs.mask_report)
        if report.problems():
            raise TrainError(f"refusing to train: {report.problems()} (see {inputs.mask_report})")

        resume_from = (runs.prepare_checkpoints(inputs.checkpoints, fingerprint, progress) if main_process
                       else None)
        resume_from = distributed.from_main(resume_from)  # the others wait for rank 0's cleanup
        if resume_from is not None:
            progress(f"train: resuming from {resume_from.name}")
        if main_process:
            runs.restore_live(resume_from, inputs.live_dir)
        plan = batching.plan_run(params, self, base, [len(ids) for ids in train_enc.input_ids], progress,
                                 processes=distributed.world_size())
        progress(f"train: {report.rows} rows, {report.trained_tokens:,} of {report.tokens:,} tokens trained "
                 f"({report.trained_share:.1%}); {plan.total_steps} steps, backend {self.name}")
        return FitJob(base=base, train=train_enc, val=val_enc, order=plan.order, total_steps=plan.total_steps,
                      max_length=max_length, params=params, checkpoints=inputs.checkpoints,
                      resume_from=resume_from, live_dir=inputs.live_dir, progress=progress,
                      micro_batches=plan.micro_batches, padding_free=plan.padding_free,
                      fingerprint=fingerprint, data_md5=data_md5, supervision=report)

    def metrics(self, job: FitJob, fitted: Fitted) -> dict:
        plan = batching.RunPlan(job.total_steps, job.order, job.micro_batches, job.padding_free)
        metrics = {
            "steps": fitted.steps,
            "resumed_from_step": runs.step_of(job.resume_from) if job.resume_from else 0,
            "train_rows": len(job.train.pair_ids),
            "val_rows": len(job.val.pair_ids) if job.val else 0,
            # the train split's supervised tokens (the mask report's count), not the tokens the steps saw
            "train_supervised_tokens": job.supervision.trained_tokens,
            "train_supervised_share": round(job.supervision.trained_share, 6),
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
        return metrics

    def save(self, job: FitJob, fitted: Fitted, metrics: dict, folder: Path) -> None:
        fitted.model.save_pretrained(folder, state_dict=fitted.adapter_state)
        canonical_adapter_config(folder / "adapter_config.json")
        job.base.tokenizer.save_pretrained(folder)
        (folder / "README.md").write_text(model_card(params=job.params, base_info=job.base.info,
                                                     chat_format=job.base.chat_format, data_md5=job.data_md5,
                                                     metrics=metrics, device=fitted.device.upper()))

    def finish(self, job: FitJob, fitted: Fitted) -> None:
        runs.finish_checkpoints(job.checkpoints, job.fingerprint, fitted.steps)
