"""Build the tiny base: train its tokenizer, build its model, warm it up, save both into a base folder.

    build_tiny_base(params.tiny, warmup_corpus(), "models/base")   # what the base stage runs

base.json records the recipe's hash (`recipe_sha256`: the params and the corpus), so a base folder says
what it was built from.
"""

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

from webtune import io, quiet
from webtune.formats import harmony
from webtune.models import INFO_FILE, MODEL_DIR, TINY, TOKENIZER_DIR, save_tokenizer
from webtune.models.tiny import TinyParams, build_tiny_model
from webtune.models.tiny_tokenizer import train_tokenizer
from webtune.models.tiny_warmup import warm_up
from webtune.params import as_dict


def texts_sha256(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def recipe_sha256(params: TinyParams, corpus_sha256: str) -> str:
    """What a tiny base is a function of: its params and its corpus (canonical JSON, hashed)."""
    recipe = {"params": as_dict(params), "corpus_sha256": corpus_sha256}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_tiny_base(params: TinyParams, texts: Sequence[str], out: str | Path, progress=io.stderr) -> dict:
    """Tokenizer + model + warm-up on `texts`, saved atomically into the base folder `out`; return metrics.

    The metrics hold no wall-clock numbers (progress prints those), so a re-run writes the same file.
    """
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(texts, params.vocab_size)
    model = build_tiny_model(params, vocab_size=len(tokenizer))
    metrics = warm_up(model, tokenizer, texts, params, progress=progress)
    # The context the model is built for (set after the warm-up, which tokenizes whole documents):
    # format refuses a format.max_length beyond it.
    tokenizer.model_max_length = params.max_position_embeddings
    corpus_sha = texts_sha256(texts)
    info = {
        "model": TINY,
        "kind": "tiny",
        "revision": None,
        "recipe_sha256": recipe_sha256(params, corpus_sha),
        "corpus_sha256": corpus_sha,
    }
    out = Path(out)
    with io.atomic_dir(out / TOKENIZER_DIR) as tmp:
        save_tokenizer(tokenizer, harmony.FORMAT, tmp)
    quiet.bars_for_terminal()  # transformers' "Writing model shards" bar: a stage log gets none
    with io.atomic_dir(out / MODEL_DIR) as tmp:
        model.save_pretrained(tmp)  # model.safetensors, config.json, generation_config.json
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if progress:
        progress(f"base: tiny gpt-oss built and warmed up in {time.perf_counter() - t0:.1f} s")
    return {
        **info,
        **metrics,
        "vocab_size": len(tokenizer),
        "corpus_docs": len(texts),
        "corpus_chars": sum(len(t) for t in texts),
    }
