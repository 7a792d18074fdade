"""Stage train: a LoRA adapter on the base, trained on the formatted chat rows (backend `hf`).

    python -m stages.train --base models/base --train data/format/train.parquet --val data/format/val.parquet
        --checkpoints models/checkpoints --out models/adapter --mask-report reports/train_mask.md
        --live-dir reports/train --metrics metrics/train.json

transformers + PEFT + TRL's SFTTrainer, on a GPU when there is one and on the CPU otherwise.

What is trained is decided here and checked before the first step:
- every row is tokenized through the chat template (stages/chat_template.py) and its supervised tokens are
  read from the token ids (`supervised_mask`: assistant content and its stop token, in `train.channels`,
  for `train.assistant_turns`); TRL turns that mask into labels;
- the labels TRL actually built are then checked: a row with no trained token, or a trained token outside
  an assistant turn, stops the stage naming the rows; a mask report (per-row counts, the trained share and
  decoded spans) is written either way;
- packing is allowed only after a probe shows packed rows give the same logits as separate rows.

Checkpoints go to a DVC `persist` folder, so `dvc repro` after a crash or SIGKILL resumes from the last
complete checkpoint of the same run (same params, data and base: a fingerprint says so). A file lock
stops a second writer. A NaN/inf loss stops training with exit 1 and no adapter. The adapter folder
(adapter weights, tokenizer, model card with lineage) is renamed into place only when everything passed.
"""

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from stages import chat_template
from stages.base import atomic_dir, load_base
from stages.io import read_chat_rows, stderr, write_json, write_text
from stages.params import TrainParams, as_dict, load_section

STAGE = "train"
RUN_FILE = "run.json"  # in the checkpoints folder: which run its checkpoints belong to
COMPLETE = "COMPLETE"  # written into a checkpoint folder after the Trainer has finished saving it
LIVE_COPY = "dvclive"  # the dvclive logs as they were at a checkpoint, restored on resume
BACKENDS = ("hf",)
PROBE_TOLERANCE = 1e-4  # max |logit difference| between packed and separate rows that still counts as equal


class TrainError(RuntimeError):
    """Training cannot start or cannot go on; the message says which rows or knobs, and what to do."""


# ---------------------------------------------------------------------------------------------
# Rows -> token ids and supervision masks


IGNORE = -100  # the label of a token that is not trained (transformers' and torch's ignore_index)


@dataclass
class Encoded:
    pair_ids: list[str]
    input_ids: list[list[int]]
    masks: list[list[int]]

    def labels(self) -> list[list[int]]:
        """What the trainer should train on: each row's ids, IGNORE where its mask is 0."""
        return [[i if m else IGNORE for i, m in zip(ids, mask, strict=True)]
                for ids, mask in zip(self.input_ids, self.masks, strict=True)]


def encode_rows(tokenizer, pair_ids: Sequence[str], rows: Sequence[list[dict]], params: TrainParams) -> Encoded:
    """Tokenize each row through the chat template; its mask says which tokens are trained.

    A row longer than train.max_length is an error naming it: truncating would cut answers (or their
    stop token) silently, and format already drops rows over format.max_length.
    """
    too_long, ids_out, masks = [], [], []
    for pair_id, messages in zip(pair_ids, rows, strict=True):
        ids, _ = chat_template.encode(tokenizer, messages)
        if len(ids) > params.max_length:
            too_long.append(f"{pair_id} ({len(ids)} tokens)")
        ids_out.append(ids)
        masks.append(chat_template.supervised_mask(tokenizer, ids, params.channels, params.assistant_turns))
    if too_long:
        raise TrainError(
            f"{len(too_long)} rows are longer than train.max_length {params.max_length} and would be truncated: "
            f"{', '.join(too_long[:10])}. Raise train.max_length or lower format.max_length (rows are never cut)."
        )
    return Encoded(list(pair_ids), ids_out, masks)


# ---------------------------------------------------------------------------------------------
# Mask report: what the trainer will actually supervise


@dataclass
class MaskReport:
    rows: int
    tokens: int
    trained_tokens: int
    per_row: list[int]
    zero_rows: list[str]
    outside_rows: list[str]
    samples: list[tuple[str, list[str]]]  # (pair_id, decoded supervised spans)

    @property
    def trained_share(self) -> float:
        return self.trained_tokens / self.tokens if self.tokens else 0.0

    def summary(self) -> dict:
        per_row = sorted(self.per_row)
        return {
            "rows": self.rows,
            "tokens": self.tokens,
            "trained_tokens": self.trained_tokens,
            "trained_share": round(self.trained_share, 6),
            "trained_tokens_per_row_min": per_row[0] if per_row else 0,
            "trained_tokens_per_row_median": per_row[len(per_row) // 2] if per_row else 0,
            "trained_tokens_per_row_max": per_row[-1] if per_row else 0,
            "rows_with_no_trained_token": len(self.zero_rows),
            "rows_training_non_assistant_tokens": len(self.outside_rows),
        }

    def problems(self) -> str | None:
        """None when training may start; otherwise a message naming the offending rows."""
        lines = []
        if self.zero_rows:
            lines.append(
                f"{len(self.zero_rows)} of {self.rows} rows have no trained token "
                f"(check train.channels / train.assistant_turns): {', '.join(self.zero_rows[:10])}"
            )
        if self.outside_rows:
            lines.append(
                f"{len(self.outside_rows)} rows would train tokens outside an assistant turn: "
                f"{', '.join(self.outside_rows[:10])}"
            )
        return "; ".join(lines) or None


def _spans(flags: Sequence[bool]) -> list[tuple[int, int]]:
    spans, lo = [], None
    for i, f in enumerate([*flags, False]):
        if f and lo is None:
            lo = i
        elif not f and lo is not None:
            spans.append((lo, i))
            lo = None
    return spans


def mask_report(tokenizer, pair_ids: Sequence[str], input_ids, labels, samples: int) -> MaskReport:
    """Check `labels` (-100 = not trained) against the assistant turns found in `input_ids`.

    `check_prepared` then proves the trainer's own labels are these, so this is what will be trained.
    """
    per_row, zero, outside, shown = [], [], [], []
    tokens = trained = 0
    for pair_id, ids, labs in zip(pair_ids, input_ids, labels, strict=True):
        allowed = [0] * len(ids)
        for _, lo, hi in chat_template.assistant_spans(tokenizer, ids):
            allowed[lo:hi] = [1] * (hi - lo)
        flags = [lab != IGNORE for lab in labs]
        n = sum(flags)
        per_row.append(n)
        tokens += len(ids)
        trained += n
        if n == 0:
            zero.append(pair_id)
        if any(f and not a for f, a in zip(flags, allowed, strict=True)):
            outside.append(pair_id)
        if len(shown) < samples:
            shown.append((pair_id, [tokenizer.decode(ids[lo:hi]) for lo, hi in _spans(flags)]))
    return MaskReport(len(per_row), tokens, trained, per_row, zero, outside, shown)


def render_mask_report(report: MaskReport, params: TrainParams) -> str:
    s = report.summary()
    lines = [
        "# Train: supervision mask",
        "",
        f"What the trainer supervises (labels != -100; the trainer's own labels are checked equal before "
        f"the first step). Channels "
        f"`{', '.join(params.channels)}`, assistant turns `{params.assistant_turns}`.",
        "",
        "| rows | tokens | trained tokens | trained share | per row min / median / max | rows with none |",
        "|---|---|---|---|---|---|",
        f"| {s['rows']} | {s['tokens']} | {s['trained_tokens']} | {s['trained_share']:.1%} | "
        f"{s['trained_tokens_per_row_min']} / {s['trained_tokens_per_row_median']} / "
        f"{s['trained_tokens_per_row_max']} | {s['rows_with_no_trained_token']} |",
        "",
    ]
    problems = report.problems()
    lines += [f"**Refused:** {problems}", ""] if problems else ["Every row trains only assistant tokens.", ""]
    for pair_id, spans in report.samples:
        lines.append(f"## {pair_id}")
        lines.append("")
        for span in spans or ["(nothing trained)"]:
            lines += ["```text", span, "```"]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Packing probe


@torch.no_grad()
def packing_leak(model, vocab_size: int, lengths: tuple[int, int] = (24, 17), seed: int = 0) -> float:
    """Max |logit difference| between two rows run separately and the same rows packed into one.

    Packed the way TRL packs (one row, position_ids restarting at 0, no attention mask): if the model
    builds its attention mask from those position_ids, the second row cannot see the first and the
    logits match; if it does not, the rows leak into each other and the difference is large.
    """
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(6, vocab_size, (n,), generator=gen) for n in lengths]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        separate = [model(input_ids=r[None].to(device), use_cache=False).logits[0].float().cpu() for r in rows]
        packed_ids = torch.cat(rows)[None].to(device)
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
        packed = model(input_ids=packed_ids, position_ids=position_ids, use_cache=False).logits[0].float().cpu()
    finally:
        model.train(was_training)
    return (packed - torch.cat(separate)).abs().max().item()


def check_packing(model, vocab_size: int) -> float:
    leak = packing_leak(model, vocab_size)
    if leak > PROBE_TOLERANCE:
        raise TrainError(
            f"train.packing is true, but packed rows leak attention into each other in this "
            f"{model.config.model_type} model with transformers (max logit difference {leak:.3g} between packed "
            f"and separate rows; tolerance {PROBE_TOLERANCE}). Packing would train on cross-example attention: "
            f"set train.packing: false."
        )
    return leak


# ---------------------------------------------------------------------------------------------
# Checkpoints, lock and resume


def file_md5(path: str | Path) -> str:
    """md5 of a file's bytes: what DVC 3 records for it in dvc.lock."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_fingerprint(params: TrainParams, base_info: dict, data_md5: dict) -> str:
    """What a checkpoint is a function of; a checkpoint from any other run is never resumed."""
    blob = {"params": as_dict(params), "base": base_info, "data": data_md5}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An flock on `path`: released by the kernel when the holder dies, so SIGKILL leaves no stale lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise TrainError(
                f"another training process (pid {holder}) holds {path} and is writing the same checkpoints "
                f"(an orphan of a killed `dvc repro`?). Wait for it or kill it, then run `dvc repro` again."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def prepare_checkpoints(folder: Path, fingerprint: str, progress=stderr) -> Path | None:
    """The last complete checkpoint of this run, or None; stale and half-written checkpoints are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    run_file = folder / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    checkpoints = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir()), key=_step_of)
    if previous.get("fingerprint") != fingerprint:
        if checkpoints and progress:
            progress(f"train: {len(checkpoints)} checkpoints in {folder} belong to another run; starting fresh")
        for p in checkpoints:
            shutil.rmtree(p)
        checkpoints = []
    for p in [p for p in checkpoints if not (p / COMPLETE).exists()]:
        if progress:
            progress(f"train: removing half-written {p.name} (its save was interrupted)")
        shutil.rmtree(p)
        checkpoints.remove(p)
    write_json({"fingerprint": fingerprint, "status": "running"}, run_file)
    return checkpoints[-1] if checkpoints else None


def finish_checkpoints(folder: Path, fingerprint: str, steps: int) -> None:
    """Training is done and the adapter saved: the checkpoints have served their purpose."""
    for p in folder.glob("checkpoint-*"):
        shutil.rmtree(p)
    write_json({"fingerprint": fingerprint, "status": "done", "steps": steps}, folder / RUN_FILE)


# ---------------------------------------------------------------------------------------------
# Trainer callbacks (built lazily: importing transformers.Trainer costs seconds)


def make_callbacks(live_dir: Path, resume: bool, total_steps: int, progress=stderr):
    from dvclive import Live
    from transformers import TrainerCallback

    class LiveAndGuard(TrainerCallback):
        """dvclive curves indexed by optimizer step, progress lines, NaN guard and checkpoint markers.

        transformers' own DVCLiveCallback numbers points by log call, not by step, so train and eval
        curves would not line up; this one sets live.step = global_step.
        """

        def __init__(self):
            self.live = Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)
            self.t0 = time.perf_counter()
            self.recording = True  # off for the evaluations after training: they are not curve points

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            for key in ("loss", "eval_loss"):
                if key in logs and not math.isfinite(logs[key]):
                    raise TrainError(
                        f"{key} is {logs[key]} at step {state.global_step}: training diverged. Lower "
                        f"train.learning_rate or check the data; no adapter was written."
                    )
            if not self.recording:
                return
            self.live.step = state.global_step
            for key, name in (("loss", "train/loss"), ("eval_loss", "eval/loss"), ("learning_rate", "train/lr")):
                if key in logs:
                    self.live.log_metric(name, logs[key])
            if "loss" in logs or "eval_loss" in logs:
                self.live.make_summary()
            if progress and ("loss" in logs or "eval_loss" in logs):
                shown = "  ".join(f"{k} {logs[k]:.4f}" for k in ("loss", "eval_loss") if k in logs)
                progress(f"train: step {state.global_step}/{total_steps}  {shown}  "
                         f"({time.perf_counter() - self.t0:.0f} s)")

        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if live_dir.exists():
                shutil.copytree(live_dir, ckpt / LIVE_COPY, dirs_exist_ok=True)
            (ckpt / COMPLETE).write_text(f"{state.global_step}\n")  # last: the checkpoint is whole

    return LiveAndGuard()


# ---------------------------------------------------------------------------------------------
# Model card


def model_card(*, params: TrainParams, base_info: dict, data_md5: dict, metrics: dict, device: str) -> str:
    import datasets
    import peft
    import transformers
    import trl

    if base_info["kind"] == "tiny":
        base_line = f"`{base_info['model']}` built by the base stage, recipe sha256 `{base_info['recipe_sha256']}`"
    else:
        base_line = f"`{base_info['model']}` at commit `{base_info['revision']}`"
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
    }
    front = {"library_name": "peft", "base_model": base_info["model"], "tags": ["webtune", "lora", "sft"]}
    data_rows = "\n".join(f"| `{name}` | `{md5}` |" for name, md5 in data_md5.items())
    version_rows = "\n".join(f"| {k} | {v} |" for k, v in versions.items())
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# webtune LoRA adapter

A LoRA adapter trained by webtune's `train` stage (backend `{params.backend}`, on {device}) with assistant-only
loss on harmony-formatted chat rows.

```python
from peft import PeftModel
from stages.base import load_base
base, tokenizer, _ = load_base("models/base")
model = PeftModel.from_pretrained(base, "models/adapter")
```

## Lineage

- Base: {base_line}
- Chat template sha256: `{hashlib.sha256(chat_template.CHAT_TEMPLATE.encode()).hexdigest()}`
- Seeds: train.seed {params.seed} (LoRA init, batch order); the split salt and base seed are in params.yaml

Data (md5, as `dvc.lock` records it for the format stage's outputs):

| file | md5 |
|---|---|
{data_rows}

## Results (validation split)

Assistant-token loss as the trainer reports it (a mean over evaluation batches); the evaluate stage's
`metrics/evaluate.json` has token-weighted numbers on the test split.

| model | loss | perplexity |
|---|---|---|
| base | {metrics['base_val_loss']:.4f} | {math.exp(metrics['base_val_loss']):.2f} |
| adapter | {metrics['val_loss']:.4f} | {math.exp(metrics['val_loss']):.2f} |

{metrics['steps']} steps, {metrics['train_rows']} training rows, {metrics['trained_tokens']} supervised tokens per epoch.

## Params (`train` section of params.yaml)

```yaml
{yaml.safe_dump(as_dict(params), sort_keys=False).strip()}
```

## Library versions

| library | version |
|---|---|
{version_rows}
"""


# ---------------------------------------------------------------------------------------------
# Training


def final_train_loss(log_history: Sequence[dict]) -> float:
    """Mean logged train loss over the last tenth of the run (one log is one batch's luck).

    From the trainer's log history, which a resumed run restores from its checkpoint, so it is the same
    number whether or not the run was interrupted (the trainer's own `training_loss` covers only the
    steps of the last process).
    """
    losses = [h["loss"] for h in log_history if "loss" in h]
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail) if tail else float("nan")


def canonical_adapter_config(path: Path) -> None:
    """PEFT writes target_modules from a set, so its order changes with the process's hash seed; sort it
    so the same run gives the same adapter_config.json bytes (and the same DVC hash)."""
    config = json.loads(path.read_text())
    for key in ("target_modules", "target_parameters", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_params(params: TrainParams) -> None:
    if params.backend not in BACKENDS:
        raise TrainError(f"train.backend {params.backend!r} is not one of {BACKENDS}")
    if params.max_steps <= 0 and params.epochs <= 0:
        raise TrainError("train.max_steps and train.epochs are both 0: nothing to train")
    if params.assistant_turns not in chat_template.TURNS:
        raise TrainError(f"train.assistant_turns must be one of {chat_template.TURNS}, got {params.assistant_turns!r}")
    if not params.lora.target_modules and not params.lora.target_parameters:
        raise TrainError("train.lora.target_modules and train.lora.target_parameters are both empty")


def check_prepared(prepared, encoded: Encoded, packing: bool, order: Sequence[int] | None = None) -> None:
    """The trainer must train exactly the tokens the mask report shows: no row dropped, no label changed.

    TRL silently drops rows with no supervised token and builds labels itself; this catches any
    difference between what was checked and what will be trained. `order` is the run's row order
    (`row_order`): a run shorter than an epoch trains only the rows in it, a longer one repeats rows.
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
        raise TrainError(
            f"the trainer's labels differ from the checked mask: dropped rows {dropped[:10]}, "
            f"changed rows {changed[:10]}"
        )


def to_dataset(encoded: Encoded, order: Sequence[int] | None = None):
    from datasets import Dataset

    order = range(len(encoded.pair_ids)) if order is None else order
    return Dataset.from_dict({
        "pair_id": [encoded.pair_ids[i] for i in order],
        "input_ids": [encoded.input_ids[i] for i in order],
        "assistant_masks": [encoded.masks[i] for i in order],
    })


def row_order(lengths: Sequence[int], rows_needed: int, batch_size: int, seed: int) -> list[int]:
    """Which row goes where, for every step of the run: a pure function of the seed.

    Each epoch is a seeded shuffle grouped by length (transformers' own length grouping: batches of
    similar length, so rows of 20 and 500 tokens do not share padding). The trainer then reads the rows
    in this order, so a resumed run skips exactly the batches already trained on and sees the same
    batches after them: the resumed adapter is bit-identical to an uninterrupted one. (The trainer's
    own length-grouped sampler draws from the global RNG, which a resume leaves in another state.)
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    order, epoch = [], 0
    while len(order) < rows_needed:
        gen = torch.Generator().manual_seed(seed + epoch)
        order += get_length_grouped_indices(list(lengths), batch_size, generator=gen)
        epoch += 1
    return order[:rows_needed]


def train(
    *,
    params: TrainParams,
    base_dir: Path,
    train_path: Path,
    val_path: Path,
    checkpoints: Path,
    out: Path,
    mask_report_path: Path,
    live_dir: Path,
    progress=stderr,
) -> dict:
    """Train, check, save; return metrics. Raises TrainError for anything the user must fix."""
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()  # per-map bars flood dvc's output; our progress lines say what runs

    t0 = time.perf_counter()
    progress = progress or (lambda _line: None)
    check_params(params)
    torch.set_num_threads(params.threads)
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({params.threads} thread(s))"

    try:
        model, tokenizer, base_info = load_base(base_dir)
    except OSError as e:  # a hub base offline, gated or missing
        raise TrainError(f"cannot load the base in {base_dir}: {e}") from e
    if params.packing:
        leak = check_packing(model, len(tokenizer))
        progress(f"train: packing probe passed (max logit difference {leak:.2e})")

    data_md5 = {str(train_path): file_md5(train_path), str(val_path): file_md5(val_path)}
    fingerprint = run_fingerprint(params, base_info, data_md5)

    try:
        train_ids, train_rows = read_chat_rows(train_path)
        val_ids, val_rows = read_chat_rows(val_path)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if not train_rows:
        raise TrainError(f"{train_path} has no rows to train on")
    train_enc = encode_rows(tokenizer, train_ids, train_rows, params)
    val_enc = encode_rows(tokenizer, val_ids, val_rows, params) if val_rows else None

    report = mask_report(tokenizer, train_enc.pair_ids, train_enc.input_ids, train_enc.labels(),
                         params.mask_report_rows)
    write_text(render_mask_report(report, params), mask_report_path)
    problems = report.problems()
    if problems:
        raise TrainError(f"refusing to train: {problems} (see {mask_report_path})")

    resume_from = prepare_checkpoints(checkpoints, fingerprint, progress)
    if resume_from is not None:
        progress(f"train: resuming from {resume_from.name}")
        if live_dir.exists():
            shutil.rmtree(live_dir)
        if (resume_from / LIVE_COPY).exists():
            shutil.copytree(resume_from / LIVE_COPY, live_dir)
    elif live_dir.exists():
        shutil.rmtree(live_dir)

    config = SFTConfig(
        output_dir=str(checkpoints),
        max_steps=-1,  # the dataset below holds exactly total_steps batches, in row_order's order
        num_train_epochs=1,
        per_device_train_batch_size=params.batch_size,
        per_device_eval_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_schedule,
        warmup_steps=params.warmup_ratio,  # a float in [0, 1) is a share of the steps in transformers 5
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        max_length=params.max_length,
        packing=params.packing,
        # Labels come from our assistant_masks column (TRL applies it whatever this flag says); True would
        # make TRL re-tokenize through the template, and the rows are already tokenized and checked.
        assistant_only_loss=False,
        seed=params.seed,
        data_seed=params.seed,
        eval_strategy="steps" if val_enc else "no",
        eval_steps=params.eval_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=2,  # the newest complete checkpoint survives a kill during the next save
        logging_steps=params.logging_steps,
        logging_nan_inf_filter=False,  # the default hides NaN losses from the logs: the guard must see them
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,  # progress is one line per log step (readable in dvc's output)
        use_cpu=not cuda,
        bf16=cuda and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        train_sampling_strategy="sequential",  # the order is row_order's (seeded, length-grouped)
        # gpt-oss's router load-balancing loss: the router is frozen (LoRA does not touch it), so the term
        # only blurs the loss curves; 0 keeps train loss = assistant-token cross-entropy.
        router_aux_loss_coef=0.0,
    )
    lora = LoraConfig(
        r=params.lora.r,
        lora_alpha=params.lora.alpha,
        lora_dropout=params.lora.dropout,
        target_modules=list(params.lora.target_modules) or None,
        target_parameters=list(params.lora.target_parameters) or None,
        modules_to_save=list(params.lora.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    rows_per_step = params.batch_size * params.grad_accum
    total_steps = params.max_steps if params.max_steps > 0 else math.ceil(
        params.epochs * len(train_rows) / rows_per_step
    )
    order = row_order([len(ids) for ids in train_enc.input_ids], total_steps * rows_per_step,
                      rows_per_step, params.seed)
    callback = make_callbacks(live_dir, resume_from is not None, total_steps, progress)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=to_dataset(train_enc, order),
        eval_dataset=to_dataset(val_enc) if val_enc else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[callback],
    )

    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict; our callback prints one line
    check_prepared(trainer.train_dataset, train_enc, params.packing, order)
    progress(f"train: {report.rows} rows, {report.trained_tokens:,} of {report.tokens:,} tokens trained "
             f"({report.trained_share:.1%}); {total_steps} steps on {device}")

    if resume_from is None and val_enc:
        trainer.evaluate()  # step-0 point of the eval curve: LoRA B starts at zero, so this is the base
    t_train = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - t_train

    callback.recording = False
    metrics = {
        "steps": trainer.state.global_step,
        "resumed_from_step": _step_of(resume_from) if resume_from else 0,
        "train_rows": len(train_rows),
        "val_rows": len(val_rows),
        "trained_tokens": report.trained_tokens,
        "trained_share": round(report.trained_share, 6),
        "train_loss": round(final_train_loss(trainer.state.log_history), 6),
    }
    if val_enc:
        metrics["val_loss"] = round(trainer.evaluate()["eval_loss"], 6)
        with trainer.model.disable_adapter():
            metrics["base_val_loss"] = round(trainer.evaluate(metric_key_prefix="base")["base_loss"], 6)
        for key in ("val_loss", "base_val_loss"):
            if not math.isfinite(metrics[key]):
                raise TrainError(f"{key} is {metrics[key]} after training: no adapter was written")
    callback.live.end()

    with atomic_dir(out) as tmp:
        trainer.model.save_pretrained(tmp)
        canonical_adapter_config(tmp / "adapter_config.json")
        tokenizer.save_pretrained(tmp)
        if val_enc:
            card = model_card(params=params, base_info=base_info, data_md5=data_md5, metrics=metrics,
                              device="GPU" if cuda else "CPU")
            (tmp / "README.md").write_text(card)
    finish_checkpoints(checkpoints, fingerprint, trainer.state.global_step)

    tokens_seen = trainer.state.num_input_tokens_seen
    return {
        **metrics,
        "device": "cuda" if cuda else "cpu",
        "tokens_per_s": round(tokens_seen / train_seconds, 1) if train_seconds > 0 and not resume_from else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="base folder (stages.base)")
    parser.add_argument("--train", required=True, type=Path, help="train split Parquet (stages.format)")
    parser.add_argument("--val", required=True, type=Path, help="val split Parquet (held-out loss)")
    parser.add_argument("--checkpoints", required=True, type=Path, help="persistent checkpoint folder")
    parser.add_argument("--out", required=True, type=Path, help="adapter folder to write")
    parser.add_argument("--mask-report", required=True, type=Path, help="Markdown mask report to write")
    parser.add_argument("--live-dir", required=True, type=Path, help="dvclive folder (loss curves)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_section(STAGE, args.params)

    lock = args.checkpoints.with_name(args.checkpoints.name + ".lock")
    try:
        with exclusive_lock(lock):
            metrics = train(
                params=params, base_dir=args.base, train_path=args.train, val_path=args.val,
                checkpoints=args.checkpoints, out=args.out, mask_report_path=args.mask_report,
                live_dir=args.live_dir,
            )
    except TrainError as e:
        raise SystemExit(f"train: {e}") from None
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    main()
