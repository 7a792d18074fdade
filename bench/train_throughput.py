"""Training throughput on one GPU: (a) the original Unsloth recipe exactly as written (config `recipe`),
(b) our hf backend, (c) our unsloth backend as params.yaml configures it, on the same rows, each in its own
process.

    python bench/train_throughput.py lengths --format-dir data/format --out bench/format_row_lengths.json
    python bench/train_throughput.py build --shape llama-3.1-8b --dir /tmp/tp          # base + rows
    python bench/train_throughput.py run --config recipe --dir /tmp/tp \
        --out bench/results/train_throughput.json
    python bench/train_throughput.py run --config hf --dir /tmp/tp --out bench/results/train_throughput.json
    python bench/train_throughput.py run --config unsloth --dir /tmp/tp \
        --out bench/results/train_throughput.json
    python bench/train_throughput.py smoke     # CPU: a tiny Llama, the hf configuration, 8 steps: seconds

No weights reach the GPU machine, so each base is a real shape built from its config (random bf16
weights, the real vocabulary size) with a toy tokenizer in the shape's chat format (tests/toys.py). The
rows are synthetic chat rows drawn to the token-length histogram of our format stage's output
(bench/format_row_lengths.json: prompt and answer tokens per row of data/format/train.parquet, as the
default base's tokenizer counts them).

What is measured, per run, over the optimizer steps after --warmup (compilation and the first steps
are left out; 12 of 40 by default, since on a GPU compilation can last well past 4 steps): useful
tokens/s (supervised tokens: the ones the loss is taken on), all tokens/s (every
non-pad token), padding share, peak GPU memory (torch's allocator peak over the whole process,
loading included) and MFU = 6 x active parameters x all tokens/s / the GPU's dense bf16 peak (a LoRA
step on a frozen base does ~4N FLOPs a token, plus ~2N for recomputing checkpointed activations).
Counting is done on every batch a training dataloader hands out, the same way for the three runs. Each
timed step's seconds are kept, and a window whose first and last thirds differ by more than 10% is
flagged (`window_stable: false`, bench/record.py): its rate still holds start-up cost.

(b) and (c) run through the train stage's own `train()`: the mask check, the planned micro-batches and
everything else as in `dvc repro`. The three share the original recipe's LoRA (r 8, alpha 16, q/k/v/o/gate/up/
down, dropout 0) and learning rate, so the only differences are loading, batching and kernels.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
from record import Recorder, window  # noqa: E402  (bench/ is the script's folder)
from shapes import SHAPES, build, row_lengths  # noqa: E402

H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA's datasheet (H100/H200 SXM, dense)
RECIPE_LORA = dict(r=8, alpha=16, dropout=0.0,
                 target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

# The original recipe's train_on_responses_only markers, per chat format (its gpt-oss ones, and Unsloth's
# Llama-3 ones)
RESPONSE_PARTS = {
    "harmony": ("<|start|>user<|message|>", "<|start|>assistant<|channel|>final<|message|>"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n",
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


class Meter:
    """Counts every batch a training dataloader collates, with the time it was asked for.

    The trainer asks for a step's micro-batches at the start of the step; synchronizing first makes the
    time the end of the GPU work queued before it.
    """

    def __init__(self):
        self.batches = []  # (time, supervised tokens, real tokens, tokens put through incl. pads)

    def install(self) -> None:
        import torch
        from torch.utils.data import DataLoader

        meter, original_init = self, DataLoader.__init__

        class Counting:
            def __init__(self, collate):
                self.collate = collate

            def __call__(self, examples):
                batch = self.collate(examples)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                ids, labels = batch["input_ids"], batch["labels"]
                real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
                meter.batches.append((time.perf_counter(), int((labels != -100).sum()), real, ids.numel()))
                return batch

        def init(loader, dataset, *args, collate_fn=None, **kwargs):
            if collate_fn is not None and not isinstance(collate_fn, Counting):
                collate_fn = Counting(collate_fn)
            original_init(loader, dataset, *args, collate_fn=collate_fn, **kwargs)

        DataLoader.__init__ = init

    def summary(self, grad_accum: int, warmup: int) -> dict:
        """Rates over the steps after `warmup`: from the start of step warmup+1 to the start of the last."""
        steps = [self.batches[i:i + grad_accum] for i in range(0, len(self.batches), grad_accum)]
        timed = steps[warmup:-1]  # the last step has no end mark: leave it out
        starts = [step[0][0] for step in steps[warmup:]]
        seconds = starts[-1] - starts[0]
        useful, real, through = (sum(b[k] for step in timed for b in step) for k in (1, 2, 3))
        return {"timed_steps": len(timed), "seconds": round(seconds, 2),
                "useful_tokens_per_s": round(useful / seconds), "all_tokens_per_s": round(real / seconds),
                "padding_share": round(1 - real / through, 4),
                **window([b - a for a, b in zip(starts, starts[1:], strict=False)])}


def active_params(config) -> int:
    """Parameters a token goes through (no embedding lookup; top-k of the experts in a MoE)."""
    h, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attention = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
    if getattr(config, "num_local_experts", None):
        mlp = config.num_experts_per_tok * 3 * h * config.intermediate_size + h * config.num_local_experts
    else:
        mlp = 3 * h * config.intermediate_size
    return layers * (attention + mlp) + h * vocab


def run_recipe(folder: Path, steps: int) -> tuple[int, dict]:
    """The original Unsloth recipe's training cell, as written (its model swapped for the local shape)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel
    from unsloth.chat_templates import train_on_responses_only

    from webtune.io import read_chat_rows
    from webtune.models import load_tokenizer

    tok, fmt = load_tokenizer(folder / "base" / "tokenizer")
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(folder / "base" / "model"), tokenizer_name=str(folder / "base" / "tokenizer"),
        max_seq_length=1024, load_in_4bit=True, dtype=None, local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, r=8, target_modules=list(RECIPE_LORA["target_modules"]), lora_alpha=16, lora_dropout=0,
        bias="none", use_gradient_checkpointing="unsloth", random_state=3407)
    _, rows = read_chat_rows(folder / "train.parquet")
    dataset = Dataset.from_dict({"text": [tok.apply_chat_template(m, tokenize=False) for m in rows]})
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=dataset, args=SFTConfig(
        dataset_text_field="text", per_device_train_batch_size=2, gradient_accumulation_steps=4,
        warmup_steps=5, max_steps=steps, learning_rate=2e-4, logging_steps=1, optim="adamw_8bit",
        weight_decay=0.01, lr_scheduler_type="linear", seed=3407, output_dir=str(folder / "seed-out"),
        report_to="none", max_length=1024, save_strategy="no"))
    instruction, response = RESPONSE_PARTS[fmt.name]
    trainer = train_on_responses_only(trainer, instruction_part=instruction, response_part=response)
    trainer.train()
    return 4, {"batch_layout": "Unsloth's own"}


def run_ours(folder: Path, backend: str, steps: int) -> tuple[int, dict]:
    from stages import train
    from webtune.params import load_section

    params = load_section("train", REPO / "params.yaml")
    params = dataclasses.replace(params, backend=backend, max_steps=steps, learning_rate=2e-4,
                                 eval_steps=10_000, save_steps=10_000, logging_steps=1,
                                 lora=dataclasses.replace(params.lora, **RECIPE_LORA, target_parameters=(),
                                                          modules_to_save=()))
    said = []
    metrics = train.train(params=params, max_length=1024, base_dir=folder / "base",
                          train_path=folder / "train.parquet",
                val_path=folder / "val.parquet", checkpoints=folder / f"ckpt-{backend}",
                out=folder / f"adapter-{backend}", mask_report_path=folder / f"mask-{backend}.md",
                live_dir=folder / f"live-{backend}", progress=said.append)
    print("\n".join(line for line in said if "step" not in line or "done" in line), file=sys.stderr)
    knobs = getattr(params, backend)
    return params.grad_accum, {"batch_tokens": knobs.batch_tokens,
                               "batch_layout": metrics.get("batch_layout",
                                                           f"padded ({params.batch_size} rows)"),
                               **{k: metrics[k] for k in ("rows_per_micro_batch",) if k in metrics}}


def run(config_name: str, folder: Path, steps: int, warmup: int) -> dict:
    if config_name in ("recipe", "unsloth"):
        import unsloth  # noqa: F401  (first, as Unsloth asks)
    from gpu_unsloth_smoke import dvclive_stand_in

    dvclive_stand_in()
    import torch
    from transformers import AutoConfig

    meter = Meter()
    meter.install()
    t0 = time.perf_counter()
    if config_name == "recipe":
        grad_accum, batching = run_recipe(folder, steps)
    else:
        grad_accum, batching = run_ours(folder, config_name, steps)
    result = {"config": config_name, "steps": steps, "warmup": warmup, **batching,
              **meter.summary(grad_accum, warmup),
              "micro_batches": len(meter.batches), "wall_s": round(time.perf_counter() - t0, 1)}
    from webtune.models import base_info

    config = AutoConfig.from_pretrained(folder / "base" / "model")
    info = base_info(folder / "base")
    result["shape"], result["layers"] = info["model"], info["layers"]
    result["active_params"] = active_params(config)
    if torch.cuda.is_available():
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        result["mfu"] = round(6 * result["active_params"] * result["all_tokens_per_s"]
                              / H200_BF16_DENSE_FLOPS, 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["lengths", "build", "run", "smoke"],
                        help="smoke: build + run of the hf configuration on a tiny Llama (CPU, a temp dir)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/throughput"))
    parser.add_argument("--rows", type=int, default=4000, help="synthetic train rows (build)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape (build)")
    parser.add_argument("--fixed-length", type=int, default=0,
                        help="rows of one question/answer length, not the format stage's histogram; the "
                        "toy tokenizer's count comes out ~1.6x higher (row_tokens.json has it) (build)")
    parser.add_argument("--config", choices=["recipe", "hf", "unsloth"], default="unsloth")
    parser.add_argument("--steps", type=int, default=40,
                        help="optimizer steps (the original recipe's max_steps is 60; 40 saves device time)")
    parser.add_argument("--warmup", type=int, default=12,
                        help="steps left out of the timing (compilation lasted past 4 steps on an H100)")
    parser.add_argument("--format-dir", type=Path, default=REPO / "data" / "format")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (bench/record.py): replaces the record of the same shape, config "
                             "and batch_tokens, keeps the others")
    args = parser.parse_args()
    if args.step == "lengths":
        lengths = row_lengths(args.format_dir)
        (args.out or REPO / "bench" / "format_row_lengths.json").write_text(json.dumps(
            {"source": str(args.format_dir / "train.parquet"), "what": "[prompt tokens, supervised tokens]",
             "lengths": lengths}) + "\n")
        return
    if args.step == "build":
        build(args.shape, args.dir, args.rows, args.layers, args.fixed_length)
        return
    recorder = Recorder("train_throughput", smoke=args.step == "smoke")
    if args.step == "smoke":
        with tempfile.TemporaryDirectory(prefix="throughput-smoke-") as tmp:
            build("tiny-llama", Path(tmp), n_rows=64)
            result = run("hf", Path(tmp), steps=8, warmup=2)
    else:
        result = run(args.config, args.dir, args.steps, args.warmup)
    recorder.save(args.out, result, key=("shape", "config", "batch_tokens"))


if __name__ == "__main__":
    main()
