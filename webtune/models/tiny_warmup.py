"""The tiny base's warm-up: plain causal-LM training on its corpus, so the base is not random noise.

A random base makes "the adapter beats the base" trivially true. `warm_up` trains the model that
webtune.models.tiny builds for `base.tiny.warmup_steps` on fixed-length blocks of the corpus and reports
the held-out loss before and after.
"""

import math
import time
from collections.abc import Callable, Sequence

import torch

from webtune import io
from webtune.errors import UserError
from webtune.formats import harmony, neutralise
from webtune.models.tiny import TinyParams, n_params

# Held-out share of warm-up blocks, capped at 128 blocks x 256 tokens = 32k tokens, so a bigger corpus
# does not make each evaluation slower (1.45 MB of pydoc text -> 355k tokens -> 69 held-out blocks).
EVAL_SHARE = 0.05
MAX_EVAL_BLOCKS = 128


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
