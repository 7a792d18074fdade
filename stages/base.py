"""Stage base: the base model and tokenizer that format, train and evaluate share.

    python -m stages.base --corpus data/clean/docs.parquet --out models/base --metrics metrics/base.json

Two kinds of base, chosen by `base.model` in params.yaml:

- `tiny-gpt-oss` (offline, the default): a byte-level BPE tokenizer trained on the clean corpus, a
  ~0.65 M-param gpt-oss model built from a config, and a short causal-LM warm-up on the same corpus so
  the base is not random noise (a random base makes "the adapter beats the base" trivially true).
  Everything is saved with `save_pretrained` into --out, plus base.json describing the recipe.
- a Hugging Face Hub id (e.g. `unsloth/gpt-oss-20b`): nothing is downloaded here; the stage resolves
  `base.revision` to the exact commit sha and records it in --out/base.json, so later stages load
  exactly that commit.

Other stages call `load_base(path)` / `load_tokenizer(path)` and never care which kind it was.
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GptOssConfig,
    GptOssForCausalLM,
    PreTrainedTokenizerFast,
)

from stages import chat_template
from stages.io import stderr, write_json
from stages.params import BaseParams, as_dict, load_section

TINY = "tiny-gpt-oss"
INFO_FILE = "base.json"

# gpt-oss alternates a sliding-window layer with a full-attention layer. 128 tokens (gpt-oss's own
# window) is half of warmup_seq_len, so the sliding layers really do slide during warm-up.
SLIDING_WINDOW = 128
ROPE_THETA = 150000.0  # gpt-oss's theta, with plain RoPE: the default YaRN scaling is for 131k contexts

# Held-out share of warm-up blocks, capped at 128 blocks x 256 tokens = 32k tokens, so a bigger corpus
# does not make each evaluation slower (1.45 MB of pydoc text -> 355k tokens -> 69 held-out blocks).
EVAL_SHARE = 0.05
MAX_EVAL_BLOCKS = 128

_SHA = re.compile(r"[0-9a-f]{40}")


class BaseResolveError(RuntimeError):
    """A hub base could not be resolved to a commit sha (offline, gated, missing, bad revision)."""


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; the chat template's specials are ids 0..5, in SPECIAL_TOKENS order.

    bos is None: harmony text starts with `<|start|>`, not a bos token, and the template emits none;
    setting bos = `<|endoftext|>` would invite code (TRL, generate) to prepend one to every chat row,
    a token the template never produces, and make format's token counts disagree with train's. eos = `<|return|>` (what the answer
    ends with and generation stops on); pad = `<|endoftext|>` (never supervised: labels mask pads).
    Deterministic: the same texts and vocab_size give the same tokenizer.json byte for byte.
    """
    texts = [chat_template.neutralise(t) for t in texts]  # corpus text must never spell a control token
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps a token's leading space inside its offsets, so the assistant mask
    # (computed from character offsets) has no holes at word boundaries.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat_template.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no text is ever unencodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=chat_template.RETURN,
        pad_token=chat_template.ENDOFTEXT,
        chat_template=chat_template.CHAT_TEMPLATE,
    )
    check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(tokenizer) -> None:
    """Every chat-template control token must be one special id, or injection checks mean nothing."""
    special_ids = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token in chat_template.SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1 or ids[0] not in special_ids:
            raise ValueError(f"tokenizer does not encode {token} as one special id (got {ids})")


# ---------------------------------------------------------------------------------------------
# Model


def build_tiny_model(params: BaseParams, vocab_size: int) -> GptOssForCausalLM:
    """A gpt-oss model of the real architecture at toy width, initialised from params.seed."""
    if params.hidden_size % params.num_heads:
        raise ValueError(
            f"base.hidden_size {params.hidden_size} is not divisible by base.num_heads {params.num_heads}"
        )
    config = GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=params.hidden_size,
        intermediate_size=params.hidden_size,  # gpt-oss's experts are as wide as the model (2880/2880)
        num_hidden_layers=params.num_layers,
        num_attention_heads=params.num_heads,
        num_key_value_heads=params.num_kv_heads,
        head_dim=params.hidden_size // params.num_heads,
        num_local_experts=params.num_experts,
        num_experts_per_tok=params.experts_per_token,
        max_position_embeddings=params.max_position_embeddings,
        sliding_window=SLIDING_WINDOW,
        layer_types=[("sliding_attention", "full_attention")[i % 2] for i in range(params.num_layers)],
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        attn_implementation="eager",  # gpt-oss's attention sinks exist only in the eager kernel (sdpa raises)
        bos_token_id=None,
        eos_token_id=chat_template.SPECIAL_TOKENS.index(chat_template.RETURN),
        pad_token_id=chat_template.SPECIAL_TOKENS.index(chat_template.ENDOFTEXT),
    )
    torch.manual_seed(params.seed)
    model = GptOssForCausalLM(config)
    # A base that was warmed up on documents ends them with <|endoftext|>; a chat model ends with <|return|>.
    model.generation_config.eos_token_id = [config.eos_token_id, config.pad_token_id]
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Warm-up


def corpus_blocks(tokenizer, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """Docs tokenized and joined with <|endoftext|>, cut into [n_blocks, seq_len] (the tail is dropped)."""
    eot = tokenizer.convert_tokens_to_ids(chat_template.ENDOFTEXT)
    encoded = tokenizer([chat_template.neutralise(t) for t in texts], add_special_tokens=False)["input_ids"]
    ids = [i for doc in encoded for i in (*doc, eot)]
    n_blocks = len(ids) // seq_len
    if n_blocks < 2:
        raise ValueError(
            f"warm-up corpus too small: {len(ids)} tokens make {n_blocks} blocks of base.warmup_seq_len "
            f"{seq_len}; need at least 2 (one to train on, one held out)"
        )
    return torch.tensor(ids[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


@torch.no_grad()
def eval_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token loss over `blocks` (every block is full length, so batch means average evenly)."""
    model.eval()
    total = 0.0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        total += model(input_ids=batch, labels=batch).loss.item() * len(batch)
    model.train()
    return total / len(blocks)


def _check_finite(loss: float, where: str) -> None:
    if not math.isfinite(loss):
        raise ValueError(f"warm-up loss is {loss} {where}: lower base.warmup_lr or check the model weights")


def _lr_factor(step: int, steps: int) -> float:
    """Linear ramp over the first 5% of steps (Adam's moments start at zero), then cosine to 0."""
    ramp = max(1, steps // 20)
    if step < ramp:
        return (step + 1) / ramp
    return 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(1, steps - ramp)))


def warm_up(
    model,
    tokenizer,
    texts: Sequence[str],
    params: BaseParams,
    progress: Callable[[str], None] | None = stderr,
) -> dict:
    """Plain causal-LM training of `model` on `texts` for params.warmup_steps; return metrics.

    Deterministic on CPU for a fixed params.threads: batch order comes from a generator seeded with
    params.seed and the held-out blocks are a seeded random ~5% of the corpus.
    Raises ValueError as soon as a loss is NaN/inf.
    """
    t0 = time.perf_counter()
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    gen = torch.Generator().manual_seed(params.seed)

    blocks = corpus_blocks(tokenizer, texts, params.warmup_seq_len)
    perm = torch.randperm(len(blocks), generator=gen)
    n_eval = min(MAX_EVAL_BLOCKS, max(1, round(EVAL_SHARE * len(blocks))))
    eval_blocks, train_blocks = blocks[perm[:n_eval]], blocks[perm[n_eval:]]

    initial = eval_loss(model, eval_blocks, params.warmup_batch_size)
    _check_finite(initial, "before warm-up (held-out)")
    if progress:
        progress(
            f"warm-up: {blocks.numel():,} tokens, {len(train_blocks)} train / {n_eval} held-out blocks of "
            f"{params.warmup_seq_len}; held-out loss {initial:.4f}"
        )

    optimizer = torch.optim.AdamW(
        model.parameters(), lr=params.warmup_lr, betas=(0.9, 0.95), weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, params.warmup_steps))
    log_every = max(1, params.warmup_steps // 10)  # 200 steps -> every 20
    order, cursor, losses = torch.randperm(len(train_blocks), generator=gen), 0, []
    t_train = time.perf_counter()
    model.train()
    for step in range(params.warmup_steps):
        if cursor + params.warmup_batch_size > len(order):  # next epoch, freshly shuffled
            order, cursor = torch.randperm(len(train_blocks), generator=gen), 0
        batch = train_blocks[order[cursor : cursor + params.warmup_batch_size]]
        cursor += params.warmup_batch_size
        loss = model(input_ids=batch, labels=batch).loss
        losses.append(loss.item())
        _check_finite(losses[-1], f"at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if progress and ((step + 1) % log_every == 0 or step + 1 == params.warmup_steps):
            progress(
                f"step {step + 1}/{params.warmup_steps} loss {losses[-1]:.4f} lr {schedule.get_last_lr()[0]:.2e}"
            )
    train_seconds = time.perf_counter() - t_train

    final = eval_loss(model, eval_blocks, params.warmup_batch_size)
    _check_finite(final, "after warm-up (held-out)")
    if progress:
        progress(f"warm-up done: held-out loss {initial:.4f} -> {final:.4f}")
    tail = losses[-10:]  # one step's loss is noisy; the last 10 average out batch luck
    train_tokens = params.warmup_steps * params.warmup_batch_size * params.warmup_seq_len
    return {
        "initial_eval_loss": round(initial, 6),
        "final_eval_loss": round(final, 6),
        "final_train_loss": round(sum(tail) / len(tail), 6) if tail else None,
        "steps": params.warmup_steps,
        "train_tokens": train_tokens,
        "corpus_tokens": blocks.numel(),
        "eval_tokens": eval_blocks.numel(),
        "tokens_per_s": round(train_tokens / train_seconds, 1) if train_seconds > 0 else None,
        "n_params": n_params(model),
        "seconds": round(time.perf_counter() - t0, 2),
    }


# ---------------------------------------------------------------------------------------------
# Hub base


def resolve_revision(model_id: str, revision: str, model_info: Callable | None = None) -> str:
    """The commit sha that `revision` (branch, tag or sha) of hub repo `model_id` points to.

    Always asks the hub, even for a 40-hex revision: a sha that does not exist in the repo should fail
    here, not in train. `model_info` is injectable for tests (default: HfApi().model_info).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    if model_info is None:
        model_info = HfApi().model_info
    pinned = bool(_SHA.fullmatch(revision))
    try:
        sha = model_info(model_id, revision=revision).sha
    except (OSError, HTTPError) as e:  # offline, DNS, 401/403 gated, 404 repo or revision
        raise BaseResolveError(
            f"cannot resolve base model {model_id!r} at revision {revision!r} on the Hugging Face Hub "
            f"({type(e).__name__}: {e}). To fix: run with network access (unset HF_HUB_OFFLINE); set "
            f"HF_TOKEN if the repo is gated or private; check the model id; pin base.revision in "
            f"params.yaml to a 40-hex commit sha. "
            + ("base.revision is already a sha, but it is still verified against the hub. " if pinned else "")
            + f"Offline, use base.model: {TINY}."
        ) from e
    if not sha or not _SHA.fullmatch(sha):
        raise BaseResolveError(
            f"hub returned no commit sha for {model_id!r} at revision {revision!r} (got {sha!r})"
        )
    if pinned and sha != revision:
        raise BaseResolveError(f"{model_id!r}: revision {revision} resolved to a different commit {sha}")
    return sha


# ---------------------------------------------------------------------------------------------
# Loading (used by format, train, evaluate)


def load_tokenizer(path: str | Path):
    """The base's tokenizer, with the project's chat template, whichever kind the base is."""
    return _load(Path(path), with_model=False)[1]


def load_base(path: str | Path):
    """(model, tokenizer, info) from a base folder; a hub base loads its pinned commit from the hub (or its cache)."""
    return _load(Path(path), with_model=True)


def _load(path: Path, with_model: bool):
    info = json.loads((path / INFO_FILE).read_text())
    if info["kind"] == "tiny":
        # local_files_only: a tiny base is a folder; never ask the hub (works with HF_HUB_OFFLINE=1).
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = None
        if with_model:
            model = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, attn_implementation="eager", dtype=torch.float32
            )
    elif info["kind"] == "hub":
        tokenizer = AutoTokenizer.from_pretrained(info["model"], revision=info["revision"])
        model = None
        if with_model:  # exactly the commit the base stage pinned; bf16 where a GPU can run it
            model = AutoModelForCausalLM.from_pretrained(
                info["model"],
                revision=info["revision"],
                dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32,
                device_map="auto" if torch.cuda.is_available() else None,
            )
    else:
        raise ValueError(f"{path / INFO_FILE}: unknown base kind {info['kind']!r} (known: tiny, hub)")
    tokenizer.chat_template = chat_template.CHAT_TEMPLATE  # the project's template, whatever the hub ships
    check_special_tokens(tokenizer)
    return model, tokenizer, info


# ---------------------------------------------------------------------------------------------
# Stage


def texts_sha256(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return h.hexdigest()


def recipe_sha256(params: BaseParams, corpus_sha256: str) -> str:
    """What a tiny base is a function of: its params and its corpus (canonical JSON, hashed)."""
    recipe = {"params": as_dict(params), "corpus_sha256": corpus_sha256}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder next to `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the output folder should be as readable as any other
    try:
        yield tmp
        old = None
        if path.exists():  # os.replace cannot overwrite a non-empty folder: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_base(params: BaseParams, texts: Sequence[str], out: str | Path, progress=stderr) -> dict:
    """Tokenizer + model + warm-up on `texts`, saved atomically into `out`; return metrics."""
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(texts, params.vocab_size)
    tokenizer_seconds = time.perf_counter() - t0
    model = build_tiny_model(params, vocab_size=len(tokenizer))
    metrics = warm_up(model, tokenizer, texts, params, progress=progress)
    corpus_sha = texts_sha256(texts)
    info = {
        "model": TINY,
        "kind": "tiny",
        "revision": None,
        "recipe_sha256": recipe_sha256(params, corpus_sha),
        "corpus_sha256": corpus_sha,
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)  # model.safetensors, config.json, generation_config.json
        tokenizer.save_pretrained(tmp)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return {
        **info,
        **metrics,
        "vocab_size": len(tokenizer),
        "corpus_docs": len(texts),
        "corpus_chars": sum(len(t) for t in texts),
        "tokenizer_seconds": round(tokenizer_seconds, 3),
    }


def read_texts(path: str | Path) -> list[str]:
    return pq.read_table(path, columns=["text"]).column("text").to_pylist()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", required=True, help="clean docs Parquet (its text column)")
    parser.add_argument("--out", required=True, help="base folder to write")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    params = load_section("base", args.params)

    if params.model == TINY:
        texts = read_texts(args.corpus)
        if not texts:
            raise SystemExit(f"base: {args.corpus} has no documents to train a tokenizer on")
        metrics = build_tiny_base(params, texts, args.out)
    else:
        try:
            sha = resolve_revision(params.model, params.revision)
        except BaseResolveError as e:
            raise SystemExit(f"base: {e}") from e
        metrics = {"model": params.model, "kind": "hub", "revision": sha}
        with atomic_dir(args.out) as tmp:
            (tmp / INFO_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    main()
