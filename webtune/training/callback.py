"""What the TRL loop (backends hf and unsloth) reports while it trains, and what is read from its logs after.

    callback = make_callback(job)    # dvclive curves by optimizer step, progress lines, NaN guard,
                                     # complete-checkpoint markers
    final_train_loss(trainer.state.log_history); logged_eval_loss(trainer.state.log_history, step)
"""

import math
import time
from collections.abc import Sequence
from pathlib import Path

from webtune.training import FitJob, TrainError, distributed
from webtune.training.run import mark_complete


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
