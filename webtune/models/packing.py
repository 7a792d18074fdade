"""Is packing safe for this model? A probe, not an assumption.

TRL packs rows into one sequence with position_ids restarting at 0 and no attention mask. A model that
builds its attention mask from those position_ids keeps packed rows apart (Llama in transformers 5:
difference < 1e-4); one that does not lets them attend to each other (gpt-oss in transformers 5), and
training on that would learn cross-example attention.
"""

import torch

from webtune.errors import UserError

PROBE_TOLERANCE = 1e-4  # max |logit difference| between packed and separate rows that still counts as equal


@torch.no_grad()
def packing_leak(model, tokenizer, lengths: tuple[int, int] = (24, 17), seed: int = 0,
                 packed_inputs: dict | None = None) -> float:
    """Max |logit difference| between two rows of ordinary tokens run separately and packed into one.

    packed_inputs: what else a trainer hands the model with packed rows (Unsloth's padding-free
    collator adds `packed_seq_lengths`), so the probe runs the same path as training.
    """
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    rows = [ordinary[torch.randint(0, len(ordinary), (n,), generator=gen)] for n in lengths]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        # use_cache=False: with a cache, transformers skips packed-sequence masking even for Llama.
        separate = [model(input_ids=r[None].to(device), use_cache=False).logits[0].float().cpu()
                    for r in rows]
        packed_ids = torch.cat(rows)[None].to(device)
        position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
        extra = {k: v.to(device) if torch.is_tensor(v) else v for k, v in (packed_inputs or {}).items()}
        packed = model(input_ids=packed_ids, position_ids=position_ids, use_cache=False,
                       **extra).logits[0].float().cpu()
    finally:
        model.train(was_training)
    return (packed - torch.cat(separate)).abs().max().item()


def check_packing(model, tokenizer) -> float:
    """The probe's difference, or UserError when packed rows leak into each other."""
    leak = packing_leak(model, tokenizer)
    if leak > PROBE_TOLERANCE:
        raise UserError(
            f"train.packing is true, but packed rows leak attention into each other in this "
            f"{model.config.model_type} model with transformers (max logit difference {leak:.3g} "
            f"between packed and separate rows; tolerance {PROBE_TOLERANCE}). "
            f"Packing would train on cross-example attention: set train.packing: false."
        )
    return leak
