"""Backend `hf`: transformers + PEFT + TRL's SFTTrainer, on a GPU when there is one and on the CPU otherwise.

The rows arrive tokenized, masked, checked and in the run's order (webtune.training.run.row_order); the
trainer reads them sequentially, and `check_prepared` proves that the labels TRL built are exactly the
checked ones before the first step. Its own section is `train.hf` in params.yaml.

`fit` in steps: place the run (device.py) -> build the trainer (trainer.py, callback.py) -> check its
labels -> the step-0 eval point and training -> read the losses. Unsloth (unsloth.py) trains in this loop
with its own loading, LoRA attach and precision.
"""

import dataclasses
import time

import torch

from webtune import quiet
from webtune.models import prepare_for_lora
from webtune.models.packing import check_packing
from webtune.params import at_least, knob, one_of
from webtune.training import BATCH_LAYOUTS, FitJob, Fitted, distributed
from webtune.training.callback import final_train_loss, logged_eval_loss, make_callback
from webtune.training.device import Placement, out_of_memory_said, pick_precision, placement
from webtune.training.local import LocalBackend
from webtune.training.trainer import check_prepared, lora_config, sft_config, to_dataset, trainer_class_for

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
        """SFTConfig's activation checkpointing: TRL defaults it to True, which on a CPU only costs time."""
        return params.hf.gradient_checkpointing

    def fit(self, job: FitJob) -> Fitted:
        import datasets

        datasets.disable_progress_bars()  # per-map bars flood dvc's output; our progress lines say what runs
        where = self.place(job)
        base = job.base
        model = base.model
        prepare_for_lora(model)
        if job.params.packing:  # the backend's probe: Unsloth hands the model the rows' lengths its own way
            probe = check_packing(self.packing_probe(base), model.config.model_type)
            job.progress(f"train: packing probe passed ({probe})")
        trainer, callback = self.build_trainer(base, job, where)
        check_prepared(trainer.train_dataset, job.train, job.params.packing, job.order)
        train_seconds = self.train(trainer, job, where)
        callback.recording = False
        fitted = self.results(trainer, job, where, train_seconds)
        if trainer.is_fsdp_enabled:  # every process takes part; rank 0 writes what they gather
            fitted.adapter_state = distributed.gathered_trainables(trainer.model)
        if callback.live is not None:
            callback.live.end()
        return fitted

    def place(self, job: FitJob) -> Placement:
        """Device, precision, threads and sharding; said in the run's first progress line and applied."""
        params, cuda = job.params, torch.cuda.is_available()
        # train.hf's sharding, where this backend launches processes (not Unsloth, which shares this loop)
        where = placement(cuda=cuda, precision=self.pick_precision(params, cuda), threads=params.hf.threads,
                          sharding=params.hf.sharding if self.processes_to_launch(params) else "none")
        job.progress(where.describe())
        torch.set_num_threads(where.threads)
        return where

    def build_trainer(self, base, job: FitJob, where: Placement):
        """(SFTTrainer over the run's rows, its LiveAndGuard callback); the LoRA attached."""
        from transformers.trainer_callback import PrinterCallback
        from trl import SFTTrainer

        params = job.params
        config = sft_config(job, where, self.trainer_checkpointing(params), base.model)
        model, lora = self.attach_lora(base.model, params)
        callback = make_callback(job)
        trainer_class = trainer_class_for(SFTTrainer, where, job.micro_batches)
        with out_of_memory_said(params), quiet.ignoring(quiet.PEFT_READS_IS_GRADIENT_CHECKPOINTING):
            # the trainer puts the model on the GPU, and wraps it with the LoRA (PEFT)
            trainer = trainer_class(model=model, args=config, train_dataset=to_dataset(job.train, job.order),
                                    eval_dataset=to_dataset(job.val) if job.val else None,
                                    processing_class=base.tokenizer, peft_config=lora, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # it prints every log dict; our callback prints one line
        return trainer, callback

    def train(self, trainer, job: FitJob, where: Placement) -> float:
        """The step-0 eval point, then the run (resumed where it stopped); the seconds training took.

        The step-0 point of the eval curve is the base (LoRA B starts at zero). Not with several processes
        or FSDP: accelerate marks a model prepared for evaluation as prepared, and train() would then skip
        the DDP wrapping, leaving each process to train on its own (measured: the ranks' weights part after
        one step). The base's loss is then taken after training, with the adapter disabled (results).
        """
        if job.resume_from is None and job.val and where.processes == 1 and where.sharding == "none":
            trainer.evaluate()
        t_train = time.perf_counter()
        with out_of_memory_said(job.params, trainer.state):
            trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
        return time.perf_counter() - t_train

    def results(self, trainer, job: FitJob, where: Placement, train_seconds: float) -> Fitted:
        """The trained model and the run's numbers: train loss, and the adapter's and the base's val loss."""
        peak_gpu_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2) if where.cuda else None
        fitted = Fitted(model=trainer.model, steps=trainer.state.global_step,
                        train_loss=final_train_loss(trainer.state.log_history),
                        tokens_seen=trainer.state.num_input_tokens_seen, train_seconds=train_seconds,
                        device=where.device, precision=where.precision, peak_gpu_gib=peak_gpu_gib)
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
        return fitted


BACKEND = HfBackend()
