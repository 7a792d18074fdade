"""Backend `hf`: transformers + PEFT + TRL's SFTTrainer, on a GPU when there is one and on the CPU otherwise.

The rows arrive tokenized, masked, checked and in the run's order (webtune.training.run.row_order); the
trainer reads them sequentially, and `check_prepared` proves that the labels TRL built are exactly the
checked ones before the first step. Its own section is `train.hf` in params.yaml.
"""

import contextlib
import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from webtune.models import prepare_for_lora
from webtune.models.packing import check_packing
from webtune.params import at_least, knob, one_of
from webtune.training import BATCH_LAYOUTS, FitJob, Fitted, TrainError, distributed
from webtune.training.local import LocalBackend
from webtune.training.run import mark_complete
from webtune.training.supervision import IGNORE, Encoded

# train.hf.sharding: each process holds the whole base (DDP) or a shard of it (FSDP; training/distributed.py)
SHARDINGS = ("none", "fsdp", "fsdp_offload")


@dataclasses.dataclass(frozen=True)
class HfParams:
    threads: int = knob(at_least(1))
    precision: str = knob(one_of("auto", "bf16", "fp32"))
    batch_tokens: int = knob(at_least(0))
    batch_layout: str = knob(one_of(*BATCH_LAYOUTS))
    processes: int = knob(at_least(1))
    sharding: str = knob(one_of(*SHARDINGS))
    gradient_checkpointing: bool = knob()


PARAMS = HfParams  # this variant's section (webtune.registry; webtune.params builds it)


def check_prepared(prepared, encoded: Encoded, packing: bool, order: Sequence[int] | None = None) -> None:
    """The trainer must train exactly the tokens the mask report shows: no row dropped, no label changed.

    TRL silently drops rows with no supervised token and builds labels itself; this catches any
    difference between what was checked and what will be trained. `order` is the run's row order: a run
    shorter than an epoch trains only the rows in it, a longer one repeats rows.
    """
    order = range(len(encoded.pair_ids)) if order is None else order
    labels = encoded.labels()
    if packing:  # packed rows lose their ids; the supervised token count must survive packing
        got = sum(sum(lab != IGNORE for lab in labs) for labs in prepared["labels"])
        want = sum(sum(lab != IGNORE for lab in labels[i]) for i in order)
        if got != want:
            raise TrainError(f"packing changed the supervised token count from {want} to {got}")
        return
    expected = {encoded.pair_ids[i]: labels[i] for i in order}
    got = dict(zip(prepared["pair_id"], prepared["labels"], strict=True))
    dropped = [pid for pid in expected if pid not in got]
    changed = [pid for pid in expected if pid in got and got[pid] != expected[pid]]
    if dropped or changed:
        raise TrainError(f"the trainer's labels differ from the checked mask: dropped rows {dropped[:10]}, "
                         f"changed rows {changed[:10]}")


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX-512-BF16 or AMX), where oneDNN makes autocast pay.

    Measured on 2 cores (SmolLM2-135M, LoRA r 16): 287 vs 192 tokens/s with AMX; without it (AVX2 only)
    bf16 is emulated: 5 vs 60 tokens/s (bench/cpu_train_speed.json). torch exposes the CPUID checks only
    as private helpers, so a torch without them counts as "no".
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_precision(choice: str, cuda: bool) -> str:
    """train.hf.precision -> "bf16" (autocast; the weights stay fp32) or "fp32".

    auto: bf16 on a GPU that supports it and on a CPU with native bf16, fp32 elsewhere.
    """
    if choice != "auto":
        return choice
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if native_cpu_bf16() else "fp32"


def to_dataset(encoded: Encoded, order: Sequence[int] | None = None):
    from datasets import Dataset

    order = range(len(encoded.pair_ids)) if order is None else order
    return Dataset.from_dict({
        "pair_id": [encoded.pair_ids[i] for i in order],
        "input_ids": [encoded.input_ids[i] for i in order],
        "assistant_masks": [encoded.masks[i] for i in order],
    })


def final_train_loss(log_history: Sequence[dict]) -> float:
    """Mean logged train loss over the last tenth of the run (one log is one batch's luck).

    From the trainer's log history, which a resumed run restores from its checkpoint, so it is the same
    number whether or not the run was interrupted (the trainer's own `training_loss` covers only the
    steps of the last process).
    """
    losses = [h["loss"] for h in log_history if "loss" in h]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail) if tail else float("nan")


def logged_eval_loss(log_history: Sequence[dict], step: int) -> float | None:
    """The val loss the trainer logged at `step` (a resumed run's history holds the earlier steps too)."""
    return next((h["eval_loss"] for h in log_history if "eval_loss" in h and h.get("step") == step), None)


def make_callback(job: FitJob):
    from dvclive import Live
    from transformers import TrainerCallback

    class LiveAndGuard(TrainerCallback):
        """dvclive curves indexed by optimizer step, progress lines, NaN guard and checkpoint markers.

        transformers' own DVCLiveCallback numbers points by log call, not by step, so train and eval
        curves would not line up; this one sets live.step = global_step.
        """

        def __init__(self):
            # one writer of the curves and checkpoint markers: the main process of a multi-process run
            self.main = distributed.is_main()
            self.live = Live(dir=str(job.live_dir), resume=job.resume_from is not None, save_dvc_exp=False,
                             dvcyaml=None) if self.main else None
            self.t0 = time.perf_counter()
            self.recording = True  # off for the evaluations after training: they are not curve points

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            for key in ("loss", "eval_loss"):
                if key in logs and not math.isfinite(logs[key]):
                    raise TrainError(f"{key} is {logs[key]} at step {state.global_step}: training diverged. "
                                     "Lower train.learning_rate or check the data; no adapter was written.")
            if not self.recording or not self.main:
                return
            self.live.step = state.global_step
            for key, name in (("loss", "train/loss"), ("eval_loss", "eval/loss"),
                              ("learning_rate", "train/lr")):
                if key in logs:
                    self.live.log_metric(name, logs[key])
            if "loss" in logs or "eval_loss" in logs:
                self.live.make_summary()
                shown = "  ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs)
                job.progress(f"train: step {state.global_step}/{job.total_steps}  {shown}  "
                             f"({time.perf_counter() - self.t0:.0f} s)")

        def on_save(self, args, state, control, **kwargs):
            if self.main:
                mark_complete(Path(args.output_dir) / f"checkpoint-{state.global_step}", job.live_dir)

    return LiveAndGuard()


def planned_trainer(trainer_class, sizes):
    """`trainer_class` reading the training rows in the run's planned micro-batches (batching.plan).

    The dataset is laid out in plan order, so micro-batch k is the next sizes[k] rows. transformers'
    Trainer draws fixed-size batches and has no public hook for a batch sampler (5.23's
    BatchRebalanceSampler is not in the 5.17 Unsloth needs), so the training dataloader is built here,
    as the Trainer builds it: the unused columns dropped, the trainer's collator, accelerate's wrapping
    (which also skips the micro-batches already trained on when a run resumes).
    """
    from torch.utils.data import DataLoader

    from webtune.training.batching import PlannedBatches

    class PlannedTrainer(trainer_class):
        def get_train_dataloader(self):
            dataset = self._remove_unused_columns(self.train_dataset, description="training")
            return self.accelerator.prepare(DataLoader(
                dataset, batch_sampler=PlannedBatches(sizes), collate_fn=self.data_collator, num_workers=0,
                pin_memory=self.args.dataloader_pin_memory))

    return PlannedTrainer


def full_logits_on_cpu_or_sharded(trainer_class):
    """`trainer_class` computing the loss from the model's full logits when it trains on a CPU, or sharded.

    TRL's SFTTrainer (1.16) patches the model with a fused LM head that scores the supervised positions in
    tiles of the vocabulary. On a GPU the tiles are Triton kernels; on a CPU they are folded by a loop of
    small torch ops, and the backward pass computes every tile again. Measured on these 2 cores
    (SmolLM2-135M, LoRA r 16, 4 rows a step, bf16 autocast): the train stage went from 112 to 163 tokens/s
    (bench/cpu_train_speed.py, 10 steps) with the full (B, T, 49152) logits and transformers' own loss, and
    the default's 90-step run from 326 s to 227 s. Both losses are the same
    sum of supervised-token cross-entropies divided by the batch's supervised-token count; only TRL's
    `entropy` and `mean_token_accuracy` log entries, which nothing here reads, are not computed.

    Under FSDP (train.hf.sharding) the fused head cannot run at all: it reads `lm_head.weight` itself,
    outside the head's forward, where FSDP gathers the weight's shards, so it gets this process's shard
    (on the CPU, with fsdp_offload: Triton refuses a CPU pointer, measured on the H200).
    """
    from transformers import Trainer

    class FullLogitsOnCpuOrSharded(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.args.device.type != "cpu" and not self.is_fsdp_enabled:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            inputs["use_cache"] = False  # as SFTTrainer sets it: no KV cache is wanted while training
            return Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return FullLogitsOnCpuOrSharded


def fsdp_on_cpu(trainer_class):
    """`trainer_class` running train.hf.sharding's FSDP on a CPU too (gloo processes).

    accelerate (1.15) switches to FSDP only on an accelerator: on a CPU it keeps DDP and says nothing,
    so every process would hold the whole base (and FSDP1's plugin refuses a CPU outright). torch's FSDP2
    itself shards on gloo; this switches the shared state to FSDP as accelerate does on a GPU (state.py:
    AcceleratorState and PartialState both say FSDP), before the model is prepared.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    class FsdpOnCpu(trainer_class):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            state = self.accelerator.state
            if self.args.fsdp_plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
                return
            plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
            if state.mixed_precision != "no":
                plugin.set_mixed_precision(state.mixed_precision)
            state.fsdp_plugin = plugin
            state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.is_fsdp_enabled = True

    return FsdpOnCpu


@contextlib.contextmanager
def out_of_memory_said(params, state=None):
    """A CUDA out-of-memory error as one line with the knobs that fix it, not a traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        where = f"at step {state.global_step}" if state is not None else "placing the base on the GPU"
        raise TrainError(f"out of GPU memory {where} (train.hf.sharding {params.hf.sharding}, "
                         f"{distributed.world_size()} processes): lower train.batch_size or "
                         "train.hf.batch_tokens, or shard the base (train.hf.sharding fsdp over more "
                         "processes, or fsdp_offload)") from None


def lora_config(params):
    """train.lora -> PEFT's LoraConfig (SFTTrainer wraps the model with it)."""
    from peft import LoraConfig

    return LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=list(params.lora.target_modules) or None,
        target_parameters=list(params.lora.target_parameters) or None,
        modules_to_save=list(params.lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )


class HfBackend(LocalBackend):
    name = "hf"

    def processes_to_launch(self, params) -> int:
        return params.hf.processes if distributed.needs_launch(params.hf) else 0

    def attach_lora(self, model, params):
        """(model, peft_config for SFTTrainer): here the trainer attaches the LoRA itself."""
        return model, lora_config(params)

    def pick_precision(self, params, cuda: bool) -> str:
        return pick_precision(params.hf.precision, cuda)

    def batching(self, params) -> tuple[int, str]:
        return params.hf.batch_tokens, params.hf.batch_layout

    def trainer_checkpointing(self, params) -> bool:
        """SFTConfig.gradient_checkpointing: TRL defaults it to True, which on a CPU only costs time."""
        return params.hf.gradient_checkpointing

    def fit(self, job: FitJob) -> Fitted:
        import datasets
        from transformers.trainer_callback import PrinterCallback
        from trl import SFTConfig, SFTTrainer

        datasets.disable_progress_bars()  # per-map bars flood dvc's output; our progress lines say what runs
        base, params, cuda = job.base, job.params, torch.cuda.is_available()
        precision = self.pick_precision(params, cuda)
        processes = distributed.world_size()
        threads = max(1, params.hf.threads // processes)  # a multi-process run shares the CPU's cores
        # train.hf's sharding, where this backend launches processes (not Unsloth, which shares this loop)
        sharding = params.hf.sharding if self.processes_to_launch(params) else "none"
        if sharding == "fsdp_offload" and not cuda:
            raise TrainError("train.hf.sharding fsdp_offload offloads a GPU's shards to the CPU; on a CPU "
                             "use fsdp (or none)")
        job.progress(f"train: {'cuda' if cuda else 'cpu'}, {precision}"
                     + (" autocast" if precision == "bf16" else "")
                     + ("" if cuda else f", {threads} threads")
                     + (f", {processes} processes" if processes > 1 else "")
                     + (f", {sharding.replace('_', ' ')} sharded" if sharding != "none" else ""))
        torch.set_num_threads(threads)
        model = base.model
        prepare_for_lora(model)
        if params.packing:  # the backend's probe: Unsloth hands the model the rows' lengths its own way
            probe = check_packing(self.packing_probe(base), model.config.model_type)
            job.progress(f"train: packing probe passed ({probe})")
        config = SFTConfig(
            output_dir=str(job.checkpoints),
            max_steps=-1,  # the dataset below holds exactly total_steps batches, in the run's order
            num_train_epochs=1,
            per_device_train_batch_size=params.batch_size,
            per_device_eval_batch_size=params.batch_size,
            gradient_accumulation_steps=params.grad_accum,
            learning_rate=params.learning_rate,
            lr_scheduler_type=params.lr_schedule,
            warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a share of the steps in transformers 5
            weight_decay=params.weight_decay,
            max_grad_norm=params.max_grad_norm,
            # under FSDP, FSDP's own activation checkpointing (distributed.fsdp_arguments) replaces it
            gradient_checkpointing=self.trainer_checkpointing(params) and sharding == "none",
            # every row was checked to fit: nothing is cut (and a packing block). Padding-free without
            # packing must pass None (TRL refuses a limit it would not enforce).
            max_length=None if job.padding_free and not params.packing else job.max_length,
            packing=params.packing,
            # Set either way: Unsloth turns an unset padding_free on by itself. TRL warns that padding-free
            # is proven only for flash attention; the packing probe checked this model (batching.py).
            padding_free=job.padding_free,
            # Labels come from our assistant_masks column (TRL applies it whatever this flag says); True would
            # make TRL re-tokenize through the template, and the rows are already tokenized and checked.
            assistant_only_loss=False,
            seed=params.seed,
            data_seed=params.seed,
            eval_strategy="steps" if job.val else "no",
            eval_steps=params.eval_steps,
            save_strategy="steps",
            save_steps=params.save_steps,
            save_total_limit=2,  # the newest complete checkpoint survives a kill during the next save
            logging_steps=params.logging_steps,
            # the default hides NaN losses from the logs: the guard must see them
            logging_nan_inf_filter=False,
            include_num_input_tokens_seen="non_padding",
            report_to="none",
            disable_tqdm=True,  # progress is one line per log step (readable in dvc's output)
            use_cpu=not cuda,
            bf16=precision == "bf16",  # autocast (on the CPU too: accelerate's bf16 mixed precision)
            dataloader_num_workers=0,
            train_sampling_strategy="sequential",  # the order is the run's (seeded, length-grouped)
            **distributed.fsdp_arguments(sharding, model, self.trainer_checkpointing(params)),
        )
        model, lora = self.attach_lora(model, params)
        callback = make_callback(job)
        trainer_class = full_logits_on_cpu_or_sharded(SFTTrainer)
        if sharding != "none":
            trainer_class = fsdp_on_cpu(trainer_class)
        if job.micro_batches is not None:
            trainer_class = planned_trainer(trainer_class, [len(batch) for batch in job.micro_batches])
        with out_of_memory_said(params):  # the trainer puts the model on the GPU
            trainer = trainer_class(model=model, args=config, train_dataset=to_dataset(job.train, job.order),
                                    eval_dataset=to_dataset(job.val) if job.val else None,
                                    processing_class=base.tokenizer, peft_config=lora, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; our callback prints one line
        check_prepared(trainer.train_dataset, job.train, params.packing, job.order)

        # The step-0 point of the eval curve (LoRA B starts at zero, so this is the base). Not with several
        # processes or FSDP: accelerate marks a model prepared for evaluation as prepared, and train() would
        # then skip the DDP wrapping, leaving each process to train on its own (measured: the ranks' weights
        # part after one step). The base's loss is then taken after training, with the adapter disabled.
        if job.resume_from is None and job.val and distributed.world_size() == 1 and sharding == "none":
            trainer.evaluate()
        t_train = time.perf_counter()
        with out_of_memory_said(params, trainer.state):
            trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        train_seconds = time.perf_counter() - t_train
        callback.recording = False
        fitted = Fitted(model=trainer.model, steps=trainer.state.global_step,
                        train_loss=final_train_loss(trainer.state.log_history),
                        tokens_seen=trainer.state.num_input_tokens_seen, train_seconds=train_seconds,
                        device="cuda" if cuda else "cpu", precision=precision,
                        peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None)
        if job.val:
            # Each evaluation is a pass over the val rows (~15 s for 32 rows of SmolLM2 on 2 cores): reuse
            # the ones already logged. LoRA's B starts at zero, so the step-0 point is the base's loss.
            history = trainer.state.log_history
            fitted.val_loss = logged_eval_loss(history, fitted.steps)
            if fitted.val_loss is None:
                fitted.val_loss = trainer.evaluate()["eval_loss"]
            fitted.base_val_loss = logged_eval_loss(history, 0)
            if fitted.base_val_loss is None:
                with trainer.model.disable_adapter():
                    fitted.base_val_loss = trainer.evaluate(metric_key_prefix="base")["base_loss"]
        if trainer.is_fsdp_enabled:  # every process takes part; rank 0 writes what they gather
            fitted.adapter_state = distributed.gathered_trainables(trainer.model)
        if callback.live is not None:
            callback.live.end()
        return fitted


BACKEND = HfBackend()
