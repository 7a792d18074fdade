"""The unsloth backend on a GPU, next to hf, through the train stage's own `train()` (one process each:
Unsloth patches transformers as it is imported).

    python bench/gpu_unsloth_smoke.py build  --dir /tmp/smoke            # a Llama-shape base + rows
    python bench/gpu_unsloth_smoke.py train  --dir /tmp/smoke --backend hf
    python bench/gpu_unsloth_smoke.py train  --dir /tmp/smoke --backend unsloth [--4bit]
    python bench/gpu_unsloth_smoke.py reload --dir /tmp/smoke --adapter unsloth   # plain transformers + PEFT

No weights can be downloaded on the GPU machine, so the base is a Llama shape built from a config with a
toy ChatML tokenizer (tests/toys.py); the rows are the train stage test's learnable pattern. What it
shows: Unsloth loads the base stage's folder, attaches its LoRA, runs the same loop (mask check, curves,
checkpoints, card), and its adapter loads with PeftModel.from_pretrained on a plain transformers base.
The GPU image has no dvclive (it would need dvc's own packages): a stand-in that drops the curve points
is installed for this script only.
"""

import argparse
import dataclasses
import importlib.machinery
import json
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
from emit import emit  # noqa: E402  (bench/ is the script's folder)


def dvclive_stand_in() -> None:
    try:
        import dvclive  # noqa: F401
    except ImportError:
        class Live:
            def __init__(self, *args, **kwargs):
                self.step = 0

            def log_metric(self, *args, **kwargs): ...
            def make_summary(self): ...
            def end(self): ...

        module = types.ModuleType("dvclive")
        module.__spec__ = importlib.machinery.ModuleSpec("dvclive", None)  # accelerate probes find_spec
        module.Live = Live
        sys.modules["dvclive"] = module


def build(folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.stages.test_train import write_rows
    from tests.toys import format_tokenizer
    from webtune.formats import chatml
    from webtune.models import INFO_FILE, MODEL_DIR, TOKENIZER_DIR, save_tokenizer

    tok = format_tokenizer(chatml.FORMAT)
    base = folder / "base"
    save_tokenizer(tok, chatml.FORMAT, base / TOKENIZER_DIR)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(base / MODEL_DIR)
    (base / MODEL_DIR / INFO_FILE).write_text(json.dumps({
        "kind": "packaged", "model": "llama-shape-smoke", "license": "random weights",
        "package": "bench/gpu_unsloth_smoke.py", "package_version": "-", "file": "model.safetensors",
        "file_sha256": "-"}))
    write_rows(folder / "train.parquet", 256, seed=1)
    write_rows(folder / "val.parquet", 32, seed=2)


def train_with(folder: Path, backend: str, four_bit: bool) -> dict:
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first, as Unsloth asks)
    dvclive_stand_in()
    from stages import train
    from webtune.params import load_section

    params = load_section("train", REPO / "params.yaml")
    params = dataclasses.replace(params, backend=backend, max_steps=40, batch_size=8, learning_rate=1e-3,
                                 eval_steps=40, save_steps=20, eval_rows=0,
                                 unsloth=dataclasses.replace(params.unsloth, load_in_4bit=four_bit))
    name = backend + ("-4bit" if four_bit else "")
    t0 = time.perf_counter()
    metrics = train.train(params=params, max_length=512, base_dir=folder / "base",
                          train_path=folder / "train.parquet", val_path=folder / "val.parquet",
                          checkpoints=folder / f"ckpt-{name}", out=folder / f"adapter-{name}",
                          mask_report_path=folder / f"mask-{name}.md", live_dir=folder / f"live-{name}")
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    import torch

    metrics["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return {name: metrics}


def reload(folder: Path, adapter: str) -> dict:
    """The adapter on a plain transformers base (no Unsloth imported): its val loss, recomputed."""
    import torch

    from webtune.io import read_chat_rows
    from webtune.models import load_adapter, load_base
    from webtune.training.supervision import encode_rows

    base = load_base(folder / "base")
    base.model.to("cuda", torch.bfloat16)
    model = load_adapter(base, folder / f"adapter-{adapter}").eval()
    ids, rows = read_chat_rows(folder / "val.parquet")
    enc = encode_rows(base.chat_format, base.tokenizer, ids, rows, channels=["final"], turns="all",
                      max_length=512)
    total, count = 0.0, 0
    with torch.no_grad():
        for row_ids, labels in zip(enc.input_ids, enc.labels(), strict=True):
            out = model(input_ids=torch.tensor([row_ids], device="cuda"),
                        labels=torch.tensor([labels], device="cuda"))
            n = sum(1 for lab in labels[1:] if lab != -100)
            total, count = total + out.loss.item() * n, count + n
    return {f"reload-{adapter}": {"val_loss_plain_peft": round(total / count, 6),
                                  "model_class": type(model).__name__}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["build", "train", "reload"])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--4bit", dest="four_bit", action="store_true")
    parser.add_argument("--adapter", default="unsloth")
    parser.add_argument("--out", type=Path, default=None, help="append the result (JSON lines)")
    args = parser.parse_args()
    if args.step == "build":
        build(args.dir)
        return
    result = (train_with(args.dir, args.backend, args.four_bit) if args.step == "train"
              else reload(args.dir, args.adapter))
    emit(result, args.out)


if __name__ == "__main__":
    main()
