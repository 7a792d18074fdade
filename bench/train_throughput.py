"""Training throughput on one GPU: (a) the seed's Unsloth recipe exactly as written, (b) our hf backend,
(c) our unsloth backend as params.yaml configures it, on the same rows, each in its own process.

    python bench/train_throughput.py lengths --format-dir data/format --out bench/format_row_lengths.json
    python bench/train_throughput.py build --shape llama-3.1-8b --dir /tmp/tp          # base + rows
    python bench/train_throughput.py run --config seed --dir /tmp/tp --out bench/train_throughput.jsonl
    python bench/train_throughput.py run --config hf --dir /tmp/tp --out bench/train_throughput.jsonl
    python bench/train_throughput.py run --config unsloth --dir /tmp/tp --out bench/train_throughput.jsonl

No weights reach the GPU machine, so each base is a real shape built from its config (random bf16
weights, the real vocabulary size) with a toy tokenizer in the shape's chat format (tests/toys.py). The
rows are synthetic chat rows drawn to the token-length histogram of our format stage's output
(bench/format_row_lengths.json: prompt and answer tokens per row of data/format/train.parquet, as the
default base's tokenizer counts them).

What is measured, per run, over the optimizer steps after --warmup (compilation and the first steps
are left out): useful tokens/s (supervised tokens: the ones the loss is taken on), all tokens/s (every
non-pad token), padding share, peak GPU memory (torch's allocator peak over the whole process,
loading included) and MFU = 6 x active parameters x all tokens/s / the GPU's dense bf16 peak (a LoRA
step on a frozen base does ~4N FLOPs a token, plus ~2N for recomputing checkpointed activations).
Counting is done on every batch a training dataloader hands out, the same way for the three runs.

(b) and (c) run through the train stage's own `train()`: the mask check, the planned micro-batches and
everything else as in `dvc repro`. The three share the seed's LoRA (r 8, alpha 16, q/k/v/o/gate/up/
down, dropout 0) and learning rate, so the only differences are loading, batching and kernels.
"""

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
from emit import emit  # noqa: E402  (bench/ is the script's folder)

H200_BF16_DENSE_FLOPS = 989e12  # NVIDIA's datasheet (H100/H200 SXM, dense)
SEED_LORA = dict(r=8, alpha=16, dropout=0.0,
                 target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))

SHAPES = {  # name -> (chat format module, model class, config keywords)
    "llama-3.1-8b": ("llama3", "LlamaConfig", dict(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
        rms_norm_eps=1e-5)),
    "gpt-oss-20b": ("harmony", "GptOssConfig", dict(
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
        num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
        num_experts_per_tok=4, sliding_window=128, max_position_embeddings=8192,
        layer_types=["sliding_attention", "full_attention"] * 12)),
    # CPU smoke shapes (the bench's own test): seconds, not minutes
    "tiny-llama": ("llama3", "LlamaConfig", dict(
        vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048)),
}
# The seed's train_on_responses_only markers, per chat format (its gpt-oss ones, and Unsloth's Llama-3 ones)
RESPONSE_PARTS = {
    "harmony": ("<|start|>user<|message|>", "<|start|>assistant<|channel|>final<|message|>"),
    "llama3": ("<|start_header_id|>user<|end_header_id|>\n\n",
               "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


def row_lengths(format_dir: Path) -> list[list[int]]:
    """[prompt tokens, supervised tokens] per train row of the format stage (the default base's tokens)."""
    from webtune.io import read_chat_rows
    from webtune.models import load_tokenizer
    from webtune.training.supervision import encode_rows

    tokenizer, fmt = load_tokenizer(REPO / "models" / "base" / "tokenizer")
    ids, rows = read_chat_rows(format_dir / "train.parquet")
    enc = encode_rows(fmt, tokenizer, ids, rows, channels=("final",), turns="all", max_length=100_000)
    return [[len(row) - sum(mask), sum(mask)] for row, mask in zip(enc.input_ids, enc.masks, strict=True)]


def synthetic_rows(tokenizer, lengths: list[list[int]], n: int, seed: int) -> list[list[dict]]:
    """n conversations whose question and answer lengths are drawn from `lengths` (token counts)."""
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)

    def text(tokens: int) -> str:
        return tokenizer.decode([rng.choice(ordinary) for _ in range(max(1, tokens))])

    return [[{"role": "user", "content": text(q - 12)}, {"role": "assistant", "content": text(a - 2)}]
            for q, a in (rng.choice(lengths) for _ in range(n))]


def build(shape: str, folder: Path, n_rows: int, layers: int | None = None, fixed_length: int = 0) -> None:
    import importlib

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    import transformers

    from tests.toys import format_tokenizer
    from webtune.models import INFO_FILE, MODEL_DIR, TOKENIZER_DIR, save_tokenizer
    from webtune.schema import CHAT_ROWS

    fmt_name, config_class, knobs = SHAPES[shape]
    if layers:  # a shallower model of the same width (a quick check of the wiring, not a result)
        knobs = {**knobs, "num_hidden_layers": layers}
        if "layer_types" in knobs:
            knobs["layer_types"] = knobs["layer_types"][:layers]
    fmt = importlib.import_module(f"webtune.formats.{fmt_name}").FORMAT
    tok = format_tokenizer(fmt)
    base = folder / "base"
    save_tokenizer(tok, fmt, base / TOKENIZER_DIR)
    config = getattr(transformers, config_class)(**knobs, pad_token_id=tok.pad_token_id,
                                                 eos_token_id=tok.eos_token_id)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(base / MODEL_DIR)
    params = sum(p.numel() for p in model.parameters())
    # load_base gives kind tiny eager attention (gpt-oss's sinks need it) and kind packaged sdpa
    kind = "tiny" if config.model_type == "gpt_oss" else "packaged"
    (base / MODEL_DIR / INFO_FILE).write_text(json.dumps({
        "kind": kind, "model": f"{shape}-shape", "license": "random weights", "recipe_sha256": "-",
        "package": "bench/train_throughput.py", "package_version": "-", "file": "model.safetensors",
        "file_sha256": "-", "params": params, "layers": config.num_hidden_layers}))
    lengths = json.loads((REPO / "bench" / "format_row_lengths.json").read_text())["lengths"]
    if fixed_length:  # every row about as long (bench/train_multigpu.py counts a step's tokens)
        lengths = [[fixed_length // 4, fixed_length - fixed_length // 4]]
    conversations = synthetic_rows(tok, lengths, n_rows, seed=1)
    rows = [{"doc_id": f"d{i}", "source": "bench", "url": f"u{i}", "fetched_at": "2026-01-01T00:00:00Z",
             "content_sha256": "0" * 64, "pair_id": f"p{i}", "task": "doc_qa", "split": "train",
             "messages": m, "text": fmt.render(m), "n_tokens": 0, "n_special_ids": 0,
             "n_expected_special_ids": fmt.expected_special_ids(m)} for i, m in enumerate(conversations)]
    pq.write_table(pa.Table.from_pylist(rows, schema=CHAT_ROWS), folder / "train.parquet")
    pq.write_table(pa.Table.from_pylist([], schema=CHAT_ROWS), folder / "val.parquet")
    from webtune.training.supervision import encode_rows

    enc = encode_rows(fmt, tok, [r["pair_id"] for r in rows], conversations, channels=("final",), turns="all",
                      max_length=100_000)
    row_tokens = [len(ids) for ids in enc.input_ids]
    (folder / "row_tokens.json").write_text(json.dumps({
        "tokens_per_row": sum(row_tokens) / len(row_tokens), "min": min(row_tokens), "max": max(row_tokens)}))
    print(json.dumps({"shape": shape, "params": params, "rows": n_rows,
                      "build_s": round(time.perf_counter() - t0, 1)}))


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
        seconds = steps[-1][0][0] - timed[0][0][0]
        useful, real, through = (sum(b[k] for step in timed for b in step) for k in (1, 2, 3))
        return {"timed_steps": len(timed), "seconds": round(seconds, 2),
                "useful_tokens_per_s": round(useful / seconds), "all_tokens_per_s": round(real / seconds),
                "padding_share": round(1 - real / through, 4)}


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


def run_seed(folder: Path, steps: int) -> int:
    """The seed's Flow B training cell, as written (its model name swapped for the local shape)."""
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
        model, r=8, target_modules=list(SEED_LORA["target_modules"]), lora_alpha=16, lora_dropout=0,
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
    return 4


def run_ours(folder: Path, backend: str, steps: int) -> int:
    from stages import train
    from webtune.params import load_section

    params = load_section("train", REPO / "params.yaml")
    params = dataclasses.replace(params, backend=backend, max_steps=steps, learning_rate=2e-4,
                                 eval_steps=10_000, save_steps=10_000, logging_steps=1,
                                 lora=dataclasses.replace(params.lora, **SEED_LORA, target_parameters=(),
                                                          modules_to_save=()))
    said = []
    train.train(params=params, max_length=1024, base_dir=folder / "base", train_path=folder / "train.parquet",
                val_path=folder / "val.parquet", checkpoints=folder / f"ckpt-{backend}",
                out=folder / f"adapter-{backend}", mask_report_path=folder / f"mask-{backend}.md",
                live_dir=folder / f"live-{backend}", progress=said.append)
    print("\n".join(line for line in said if "step" not in line or "done" in line))
    return params.grad_accum


def run(config_name: str, folder: Path, steps: int, warmup: int) -> dict:
    if config_name in ("seed", "unsloth"):
        import unsloth  # noqa: F401  (first, as Unsloth asks)
    from gpu_unsloth_smoke import dvclive_stand_in

    dvclive_stand_in()
    import torch
    from transformers import AutoConfig

    meter = Meter()
    meter.install()
    t0 = time.perf_counter()
    grad_accum = run_seed(folder, steps) if config_name == "seed" else run_ours(folder, config_name, steps)
    result = {"config": config_name, **meter.summary(grad_accum, warmup),
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
        result["gpu"] = torch.cuda.get_device_name()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["lengths", "build", "run"])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/throughput"))
    parser.add_argument("--rows", type=int, default=4000, help="synthetic train rows (build)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the shape (build)")
    parser.add_argument("--fixed-length", type=int, default=0,
                        help="rows of one question/answer length, not the format stage's histogram; the "
                        "toy tokenizer's count comes out ~1.6x higher (row_tokens.json has it) (build)")
    parser.add_argument("--config", choices=["seed", "hf", "unsloth"], default="unsloth")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (the seed's max_steps: 60)")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the timing")
    parser.add_argument("--format-dir", type=Path, default=REPO / "data" / "format")
    parser.add_argument("--out", type=Path, default=None, help="append the result (JSON lines)")
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
    result = run(args.config, args.dir, args.steps, args.warmup)
    emit(result, args.out)


if __name__ == "__main__":
    main()
