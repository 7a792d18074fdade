"""The fast harmony base for tests and `-S base.model=tiny-gpt-oss`: a tiny gpt-oss built from a config.

A byte-level BPE tokenizer trained on a packaged corpus (`warmup_corpus`: CPython's bundled language
reference; harmony's control tokens are its ids 0..5), a ~0.65 M-param gpt-oss model of the real
architecture at toy width, initialised from `base.tiny.seed`, and a short causal-LM warm-up on the same
corpus so the base is not random noise (a random base makes "the
adapter beats the base" trivially true). `build_tiny_base` saves both into a base folder
(webtune.models), with base.json recording the recipe's hash.
"""

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GptOssConfig, GptOssForCausalLM, PreTrainedTokenizerFast

from webtune import io, quiet
from webtune.errors import UserError
from webtune.formats import harmony, neutralise
from webtune.models import INFO_FILE, MODEL_DIR, TINY, TOKENIZER_DIR, save_tokenizer
from webtune.params import as_dict, at_least, knob, positive


@dataclasses.dataclass(frozen=True)
class TinyParams:
    """base.tiny: the recipe of the tiny gpt-oss (webtune.models.tiny); read only when base.model is it."""

    vocab_size: int = knob(at_least(64))
    hidden_size: int = knob(at_least(1))
    num_layers: int = knob(at_least(1))
    num_heads: int = knob(at_least(1))
    num_kv_heads: int = knob(at_least(1))
    num_experts: int = knob(at_least(1))
    experts_per_token: int = knob(at_least(1))
    max_position_embeddings: int = knob(at_least(1))
    warmup_steps: int = knob(at_least(0))
    warmup_batch_size: int = knob(at_least(1))
    warmup_seq_len: int = knob(at_least(2))
    warmup_lr: float = knob(positive)
    seed: int = knob()
    threads: int = knob(at_least(1))

    def problems(self):
        if self.hidden_size % self.num_heads:
            yield "hidden_size", (f"{self.hidden_size} is not divisible by base.tiny.num_heads "
                                  f"({self.num_heads})")
        if self.num_heads % self.num_kv_heads:
            yield "num_kv_heads", (f"{self.num_kv_heads} does not divide base.tiny.num_heads "
                                   f"({self.num_heads})")
        if self.experts_per_token > self.num_experts:
            yield "experts_per_token", (f"{self.experts_per_token} is above base.tiny.num_experts "
                                        f"({self.num_experts})")


PARAMS = TinyParams  # this variant's section (webtune.registry; webtune.params builds it)

# gpt-oss alternates a sliding-window layer with a full-attention layer. 128 tokens (gpt-oss's own
# window) is half of warmup_seq_len, so the sliding layers really do slide during warm-up.
SLIDING_WINDOW = 128
ROPE_THETA = 150000.0  # gpt-oss's theta, with plain RoPE: the default YaRN scaling is for 131k contexts

# Held-out share of warm-up blocks, capped at 128 blocks x 256 tokens = 32k tokens, so a bigger corpus
# does not make each evaluation slower (1.45 MB of pydoc text -> 355k tokens -> 69 held-out blocks).
EVAL_SHARE = 0.05
MAX_EVAL_BLOCKS = 128


# ---------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `texts`; the chat template's specials are ids 0..5, in SPECIAL_TOKENS order.

    bos is None: harmony text starts with `<|start|>`, not a bos token, and the template emits none;
    setting bos = `<|endoftext|>` would invite code (TRL, generate) to prepend one to every chat row,
    a token the template never produces, and make format's token counts disagree with train's.
    eos = `<|return|>` (what the answer ends with and generation stops on); pad = `<|endoftext|>`
    (never supervised: labels mask pads).
    Deterministic: the same texts and vocab_size give the same tokenizer.json byte for byte.
    """
    texts = [neutralise(t) for t in texts]  # corpus text must never spell a control token
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps a token's leading space inside its offsets, so the assistant mask
    # (computed from character offsets) has no holes at word boundaries.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(harmony.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no text is ever unencodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=harmony.RETURN,
        pad_token=harmony.FORMAT.pad_token,
        chat_template=harmony.CHAT_TEMPLATE,
    )
    problem = harmony.FORMAT.fits(tokenizer)
    assert problem is None, problem  # by construction: the specials were added as such
    return tokenizer


# ---------------------------------------------------------------------------------------------
# Model


def build_tiny_model(params: TinyParams, vocab_size: int) -> GptOssForCausalLM:
    """A gpt-oss model of the real architecture at toy width, initialised from params.seed."""
    # Divisibility of heads and widths is checked when params load (webtune.params.TinyParams).
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
        eos_token_id=harmony.SPECIAL_TOKENS.index(harmony.RETURN),
        pad_token_id=harmony.SPECIAL_TOKENS.index(harmony.ENDOFTEXT),
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
    eot = tokenizer.convert_tokens_to_ids(harmony.ENDOFTEXT)
    encoded = tokenizer([neutralise(t) for t in texts], add_special_tokens=False)["input_ids"]
    ids = [i for doc in encoded for i in (*doc, eot)]
    n_blocks = len(ids) // seq_len
    if n_blocks < 2:
        raise UserError(
            f"warm-up corpus too small: {len(ids)} tokens make {n_blocks} blocks of base.tiny.warmup_seq_len "
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
        raise UserError(f"warm-up loss is {loss} {where}: lower base.tiny.warmup_lr or check the model "
                        "weights")


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
    params: TinyParams,
    progress: Callable[[str], None] | None = io.stderr,
) -> dict:
    """Plain causal-LM training of `model` on `texts` for params.warmup_steps; return metrics.

    Deterministic on CPU for a fixed params.threads: batch order comes from a generator seeded with
    params.seed and the held-out blocks are a seeded random ~5% of the corpus.
    Raises UserError as soon as a loss is NaN/inf.
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
                f"step {step + 1}/{params.warmup_steps} loss {losses[-1]:.4f} "
                f"lr {schedule.get_last_lr()[0]:.2e}"
            )
    train_seconds = time.perf_counter() - t_train

    final = eval_loss(model, eval_blocks, params.warmup_batch_size)
    _check_finite(final, "after warm-up (held-out)")
    tail = losses[-10:]  # one step's loss is noisy; the last 10 average out batch luck
    train_tokens = params.warmup_steps * params.warmup_batch_size * params.warmup_seq_len
    if progress:
        speed = f", {train_tokens / train_seconds:,.0f} tokens/s" if train_seconds > 0 else ""
        progress(f"warm-up done: held-out loss {initial:.4f} -> {final:.4f} "
                 f"({time.perf_counter() - t0:.1f} s{speed})")
    return {
        "initial_eval_loss": round(initial, 6),
        "final_eval_loss": round(final, 6),
        "final_train_loss": round(sum(tail) / len(tail), 6) if tail else None,
        "steps": params.warmup_steps,
        "train_tokens": train_tokens,
        "corpus_tokens": blocks.numel(),
        "eval_tokens": eval_blocks.numel(),
        "n_params": n_params(model),
    }


# ---------------------------------------------------------------------------------------------
# Saving


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


def warmup_corpus() -> list[str]:
    """The tiny base's corpus: CPython's language reference as the interpreter ships it (pydoc_data).

    Packaged, not scraped: the base depends on nothing the pipeline fetches, so a re-scrape or a clean
    knob never rebuilds it (79 topics, ~465 kB: its 4k BPE vocabulary and warm-up in ~1-2 min).
    """
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


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
