"""The unsloth backend on a GPU, next to hf, through the train stage's own `train()` (one process each:
Unsloth patches transformers as it is imported).

    python bench/gpu_unsloth_smoke.py build  --dir /tmp/smoke            # a Llama-shape base + rows
    python bench/gpu_unsloth_smoke.py train  --dir /tmp/smoke --backend hf
    python bench/gpu_unsloth_smoke.py train  --dir /tmp/smoke --backend unsloth [--4bit]
    python bench/gpu_unsloth_smoke.py reload --dir /tmp/smoke --adapter unsloth   # plain transformers + PEFT
    python bench/gpu_unsloth_smoke.py smoke                  # CPU, hf: build, train, probe, reload in seconds

The embedded default's data (issue 13's loss match; bench/gpu_default_loss.sh carries its base there):

    python bench/gpu_unsloth_smoke.py train  --dir D --rows data/format --backend hf   # D/base: base stage's
    python bench/gpu_unsloth_smoke.py train  --dir D --rows data/format --backend unsloth --4bit \
        --batch-tokens 0                                                               # hf's batches
    python bench/gpu_unsloth_smoke.py reload --dir D --rows data/format --adapter hf   # test loss, plain PEFT
    python bench/gpu_unsloth_smoke.py probe  --dir D --backend unsloth --4bit        # the packing probe

No weights can be downloaded on the GPU machine, so the smoke base is a Llama shape built from a config
with a toy ChatML tokenizer (tests/toys.py); the rows are the train stage test's learnable pattern. What it
shows: Unsloth loads the base stage's folder, attaches its LoRA, runs the same loop (mask check, curves,
checkpoints, card), and its adapter loads with PeftModel.from_pretrained on a plain transformers base.
The GPU image has no dvclive (it would need dvc's own packages): a stand-in that drops the curve points
is installed for this script only.

Each step's result is one record (bench/record.py) in --out, keyed by step and run name: the smoke runs
are bench "unsloth_smoke", the embedded default's (--rows) "unsloth_default_loss".
"""

import argparse
import dataclasses
import importlib.machinery
import json
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]
from record import Recorder  # noqa: E402  (bench/ is the script's folder)

# The smoke base: the Llama shape the GPU runs use, and a toy width for the CPU check of this script.
SMOKE_SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                   num_key_value_heads=8)
TOY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)


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


def build(folder: Path, shape: dict = SMOKE_SHAPE, rows: tuple[int, int] = (256, 32)) -> None:
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
    config = LlamaConfig(vocab_size=len(tok), **shape, max_position_embeddings=2048,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(base / MODEL_DIR)
    (base / MODEL_DIR / INFO_FILE).write_text(json.dumps({
        "kind": "packaged", "model": "llama-shape-smoke", "license": "random weights",
        "package": "bench/gpu_unsloth_smoke.py", "package_version": "-", "file": "model.safetensors",
        "file_sha256": "-"}))
    write_rows(folder / "train.parquet", rows[0], seed=1)
    write_rows(folder / "val.parquet", rows[1], seed=2)


def train_with(folder: Path, backend: str, four_bit: bool, rows: Path | None = None,
               batch_tokens: int | None = None, steps: int = 40) -> dict:
    """One train stage run. With `rows` (a format stage's folder): params.yaml as it is, on those rows
    and on the base in folder/base (the embedded default's, built there by the base stage)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first, as Unsloth asks)
    dvclive_stand_in()
    from stages import train
    from webtune import params as P
    from webtune.params import load_section

    params = load_section("train", REPO / "params.yaml")
    unsloth_knobs = dataclasses.replace(params.unsloth, load_in_4bit=four_bit)
    if batch_tokens is not None:
        unsloth_knobs = dataclasses.replace(unsloth_knobs, batch_tokens=batch_tokens)
    if rows is None:  # the smoke run: the learnable pattern of the train stage test
        params = dataclasses.replace(params, max_steps=steps, batch_size=8, learning_rate=1e-3,
                                     eval_steps=steps, save_steps=max(1, steps // 2), eval_rows=0,
                                     logging_steps=min(params.logging_steps, steps))  # a train loss to report
    params = P.replace(params, backend=backend, unsloth=unsloth_knobs)
    rows = rows or folder
    name = backend + ("-4bit" if four_bit else "") + (f"-{batch_tokens}" if batch_tokens is not None else "")
    t0 = time.perf_counter()
    metrics = train.train(params=params, max_length=512, base_dir=folder / "base",
                          train_path=rows / "train.parquet", val_path=rows / "val.parquet",
                          checkpoints=folder / f"ckpt-{name}", out=folder / f"adapter-{name}",
                          mask_report_path=folder / f"mask-{name}.md", live_dir=folder / f"live-{name}")
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    import torch

    if torch.cuda.is_available():
        metrics["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return {"step": "train", "run": name, **metrics}


def probe(folder: Path, backend: str, four_bit: bool) -> dict:
    """The packing probe as the train stage runs it on this base, both of its parts and the logits' scale
    (which tells kernel noise from a real difference)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first, as Unsloth asks)
    import torch

    from webtune import params as P
    from webtune.params import load_section
    from webtune.training import get_backend

    params = load_section("train", REPO / "params.yaml")
    params = P.replace(params, backend=backend,
                                 unsloth=dataclasses.replace(params.unsloth, load_in_4bit=four_bit))
    chosen = get_backend(backend)
    base = chosen.load(folder / "base", params, max_length=512)
    if backend == "hf":
        base.model.to("cuda" if torch.cuda.is_available() else "cpu", torch.bfloat16)
    result = chosen.packing_probe(base)
    with torch.no_grad():
        ids = torch.tensor([[base.tokenizer.eos_token_id] * 8], device=next(base.model.parameters()).device)
        scale = base.model(input_ids=ids, use_cache=False).logits.float().abs().max().item()
    name = backend + ("-4bit" if four_bit else "")
    return {"step": "probe", "run": name, "cross": result.cross, "apart": result.apart,
            "passes": result.passes, "logit_scale": round(scale, 2)}


def reload(folder: Path, adapter: str, split: Path | None = None) -> dict:
    """The adapter on a plain transformers base (no Unsloth imported): its loss on `split` (default:
    the smoke run's val rows), recomputed token-weighted, and the base's."""
    import torch

    from webtune.io import read_chat_rows
    from webtune.models import load_adapter, load_base
    from webtune.training.supervision import encode_rows

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_base(folder / "base")
    base.model.to(device, torch.bfloat16)
    model = load_adapter(base, folder / f"adapter-{adapter}").eval()
    split = split or folder / "val.parquet"
    ids, rows = read_chat_rows(split)
    enc = encode_rows(base.chat_format, base.tokenizer, ids, rows, channels=["final"], turns="all",
                      max_length=512)

    def loss() -> float:
        total, count = 0.0, 0
        with torch.no_grad():
            for row_ids, labels in zip(enc.input_ids, enc.labels(), strict=True):
                out = model(input_ids=torch.tensor([row_ids], device=device),
                            labels=torch.tensor([labels], device=device))
                n = sum(1 for lab in labels[1:] if lab != -100)
                total, count = total + out.loss.item() * n, count + n
        return round(total / count, 6)

    adapted = loss()
    with model.disable_adapter():
        base_loss = loss()
    return {"step": "reload", "run": adapter, "split": split.name, "loss_plain_peft": adapted,
            "base_loss": base_loss, "model_class": type(model).__name__}


def smoke(out: Path | None) -> None:
    """Every step on a toy base on the CPU, hf backend (Unsloth needs CUDA): the script's wiring, in
    seconds. --batch-tokens 0 takes the train step through both of its knob overrides."""
    recorder = Recorder("unsloth_smoke", smoke=True)
    with tempfile.TemporaryDirectory(prefix="unsloth-smoke-") as tmp:
        folder = Path(tmp)
        build(folder, TOY_SHAPE, rows=(32, 8))
        for result in (train_with(folder, "hf", False, batch_tokens=0, steps=4), probe(folder, "hf", False),
                       reload(folder, "hf-0")):
            out = recorder.save(out, result, key=("step", "run"))  # one file for the three records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["build", "train", "probe", "reload", "smoke"])
    parser.add_argument("--dir", type=Path, default=None, help="build's folder (all but smoke)")
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--4bit", dest="four_bit", action="store_true")
    parser.add_argument("--adapter", default="unsloth")
    parser.add_argument("--rows", type=Path, default=None,
                        help="a format stage's folder (train/val/test.parquet): the embedded default's run")
    parser.add_argument("--batch-tokens", type=int, default=None, help="train.unsloth.batch_tokens instead")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (bench/record.py): replaces the record of the same step and run")
    args = parser.parse_args()
    if args.step == "smoke":
        smoke(args.out)
        return
    if args.dir is None:
        parser.error(f"{args.step} needs --dir")
    if args.step == "build":
        build(args.dir)
        return
    if args.step == "train":
        result = train_with(args.dir, args.backend, args.four_bit, args.rows, args.batch_tokens)
    elif args.step == "probe":
        result = probe(args.dir, args.backend, args.four_bit)
    else:
        result = reload(args.dir, args.adapter, args.rows / "test.parquet" if args.rows else None)
    bench = "unsloth_default_loss" if args.rows else "unsloth_smoke"
    Recorder(bench).save(args.out, result, key=("step", "run"))


if __name__ == "__main__":
    main()
