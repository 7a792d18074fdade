"""Is packing safe for this model? A probe, not an assumption.

TRL packs rows into one sequence with position_ids restarting at 0 and no attention mask (so do
padding-free micro-batches). A model that builds its attention mask from those position_ids keeps packed
rows apart (Llama in transformers 5, and Unsloth's Llama given the rows' lengths); one that does not
lets them attend to each other (gpt-oss in transformers 5), and training on that would learn
cross-example attention.
"""

import torch

from webtune.errors import UserError

PROBE_TOLERANCE = 1e-4  # max |logit difference| of a row when only the row packed before it changes
# max |logit difference| between packed and separately run rows: bf16 or 4-bit kernels of other shapes
# differ by ~0.05 on a GPU (an 8B-wide Llama), while wrong positions or a leak differ by O(1)
SEPARATE_TOLERANCE = 0.5


@torch.no_grad()
def packing_leak(model, tokenizer, lengths: tuple[int, int] = (24, 17), seed: int = 0,
                 packed_inputs: dict | None = None) -> float:
    """How much a packed row's logits depend on the row packed before it (0: the rows are kept apart).

    Two packs that differ only in their first row: where attention stays within rows, the second row's
    logits are the same in both (the same shapes take the same kernels, so this holds in bf16 and 4-bit
    too); where it leaks, they differ by O(1). The packed rows are also compared with the rows run
    separately, which catches ignored position ids; that difference counts only beyond
    SEPARATE_TOLERANCE, the numerical noise of low-precision kernels on other shapes.

    packed_inputs: what else a trainer hands the model with packed rows (Unsloth's padding-free
    collator adds `packed_seq_lengths`), so the probe runs the same path as training.
    """
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    gen = torch.Generator().manual_seed(seed)
    first, second, other_first = (ordinary[torch.randint(0, len(ordinary), (n,), generator=gen)]
                                  for n in (lengths[0], lengths[1], lengths[0]))
    device = next(model.parameters()).device
    extra = {k: v.to(device) if torch.is_tensor(v) else v for k, v in (packed_inputs or {}).items()}
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None].to(device)

    def packed(rows):
        ids = torch.cat(rows)[None].to(device)
        out = model(input_ids=ids, position_ids=position_ids, use_cache=False, **extra)
        return out.logits[0].float().cpu()

    was_training = model.training
    model.eval()
    try:
        # use_cache=False: with a cache, transformers skips packed-sequence masking even for Llama.
        separate = [model(input_ids=r[None].to(device), use_cache=False).logits[0].float().cpu()
                    for r in (first, second)]
        together, swapped = packed([first, second]), packed([other_first, second])
    finally:
        model.train(was_training)
    leak = (together[lengths[0]:] - swapped[lengths[0]:]).abs().max().item()
    apart = (together - torch.cat(separate)).abs().max().item()
    return max(leak, apart if apart > SEPARATE_TOLERANCE else 0.0)


def check_packing(model, tokenizer) -> float:
    """The probe's difference, or UserError when packed rows leak into each other."""
    leak = packing_leak(model, tokenizer)
    if leak > PROBE_TOLERANCE:
        raise UserError(
            f"train.packing is true, but packed rows leak attention into each other in this "
            f"{model.config.model_type} model with transformers (max logit difference {leak:.3g} "
            f"of a packed row when the row before it changes; tolerance {PROBE_TOLERANCE}). "
            f"Packing would train on cross-example attention: set train.packing: false."
        )
    return leak
