"""Bases and rows for the GPU training benches: real model shapes built from their configs (random bf16
weights, the real vocabulary size, a toy tokenizer in the shape's chat format from tests/toys.py), and
synthetic chat rows drawn to the token-length histogram of our format stage's train split
(bench/format_row_lengths.json), or all of one length (--fixed-length, for bench/train_multigpu.py).

    python bench/train_throughput.py lengths --format-dir data/format --out bench/format_row_lengths.json
    python bench/train_throughput.py build --shape llama-3.1-8b --dir /tmp/tp       # base/ + train.parquet
"""

import json
import random
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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
