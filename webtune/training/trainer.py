"""The TRL SFTTrainer that backends hf and unsloth train with: its config, its class, its rows, and the check
that it trains exactly the checked labels.

    config = sft_config(job, where, checkpointing=True, model=model)    # where: device.Placement
    trainer = trainer_class_for(SFTTrainer, where, job.micro_batches)(
        model=model, args=config, train_dataset=to_dataset(job.train, job.order), ...)
    check_prepared(trainer.train_dataset, job.train, packing=False, order=job.order)

SFTTrainer runs as TRL ships it except for three subclasses made here: the full-logits loss on a CPU or
under FSDP, FSDP on a CPU, and the run's planned micro-batches. trl is imported inside the functions:
Unsloth must patch it before anything imports it (unsloth.UnslothBackend.prepare).
"""

import dataclasses
from collections.abc import Sequence

from webtune.training import FitJob, TrainError, distributed
from webtune.training.device import Placement
from webtune.training.supervision import IGNORE, Encoded


def to_dataset(encoded: Encoded, order: Sequence[int] | None = None):
    from datasets import Dataset

    order = range(len(encoded.pair_ids)) if order is None else order
    return Dataset.from_dict({
        "pair_id": [encoded.pair_ids[i] for i in order],
        "input_ids": [encoded.input_ids[i] for i in order],
        "assistant_masks": [encoded.masks[i] for i in order],
    })


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


def sft_config(job: FitJob, where: Placement, checkpointing: bool, model):
    """The run's SFTConfig. `checkpointing`: activation checkpointing (transformers' own, or FSDP's when
    sharded); TRL turns it on unless told."""
    from trl import SFTConfig

    params = job.params
    # transformers 5.23 renamed gradient_checkpointing to activation_checkpointing (the old name warns, and
    # mirrors the new one for TRL and Unsloth to read); an older one (Unsloth's <= 5.17) takes the old name
    renamed = "activation_checkpointing" in {field.name for field in dataclasses.fields(SFTConfig)}
    checkpointing_key = "activation_checkpointing" if renamed else "gradient_checkpointing"
    return SFTConfig(
        output_dir=str(job.checkpoints),
        max_steps=-1,  # the dataset holds exactly total_steps batches, in the run's order
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
        **{checkpointing_key: checkpointing and where.sharding == "none"},
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
        use_cpu=not where.cuda,
        bf16=where.precision == "bf16",  # autocast (on the CPU too: accelerate's bf16 mixed precision)
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the order is the run's (seeded, length-grouped)
        **distributed.fsdp_arguments(where.sharding, model, checkpointing),
    )


def trainer_class_for(base_class, where: Placement, micro_batches: list[list[int]] | None):
    """`base_class` (SFTTrainer) with the full-logits loss where it pays, FSDP on a CPU when sharded, and
    the run's planned micro-batches when it has them."""
    trainer = full_logits_on_cpu_or_sharded(base_class)
    if where.sharding != "none":
        trainer = fsdp_on_cpu(trainer)
    if micro_batches is not None:
        trainer = planned_trainer(trainer, [len(batch) for batch in micro_batches])
    return trainer


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
