"""Is packing safe for this model? A probe, not an assumption.

TRL packs rows into one sequence with position_ids restarting at 0 and no attention mask (so do
padding-free micro-batches). A model that builds its attention mask from those position_ids keeps packed
rows apart (Llama in transformers 5, and Unsloth's Llama given the rows' lengths); one that does not
lets them attend to each other (gpt-oss in transformers 5), and training on that would learn
cross-example attention.
"""

from dataclasses import dataclass

import torch

from webtune.errors import UserError

PROBE_TOLERANCE = 1e-4  # max |logit difference| of a row when only the row packed before it changes
# max |logit difference| between packed and separately run rows, as a share of the largest |logit|: bf16
# kernels of other shapes differ by a few percent (SmolLM2-135M in bf16 on a CPU, 4 seeds: 1.7-3.8%; in
# 4-bit through Unsloth on an H200: 3.1%), while positions read wrong differ by most of the logits' scale
# (its positions doubled: 78.5%). An absolute 0.5 refused SmolLM2 in 4-bit, whose logits reach ~35.
SEPARATE_TOLERANCE = 0.25


@dataclass(frozen=True)
class Probe:
    """What the packing probe measured."""

    cross: float  # of the second packed row when only the first row changes: attention across rows
    apart: float  # of the packed rows against the same rows run alone, over their largest |logit|

    @property
    def passes(self) -> bool:
        return self.cross <= PROBE_TOLERANCE and self.apart <= SEPARATE_TOLERANCE

    def __str__(self) -> str:
        return f"packing probe: across rows {self.cross:.3g}, against rows run alone {self.apart:.1%}"

    def failure(self) -> str:
        """Why packing is unsafe here, in words ('' when the probe passes)."""
        if self.cross > PROBE_TOLERANCE:
            return (f"rows laid end to end attend to each other (a row's logits move by {self.cross:.3g} "
                    f"when the row before it changes; tolerance {PROBE_TOLERANCE})")
        if self.apart > SEPARATE_TOLERANCE:
            return (f"rows laid end to end give other logits than the same rows run alone (by "
                    f"{self.apart:.0%} of the largest logit; kernel noise stays below "
                    f"{SEPARATE_TOLERANCE:.0%}): their positions are not kept")
        return ""


@torch.no_grad()
def probe_packing(model, tokenizer, lengths: tuple[int, int] = (24, 17), seed: int = 0,
                  packed_inputs: dict | None = None) -> Probe:
    """Whether rows laid end to end stay apart and keep their positions in this model (a Probe).

    Two packs that differ only in their first row: where attention stays within rows, the second row's
    logits are the same in both (the same shapes take the same kernels, so this holds in bf16 and 4-bit
    too); where it leaks, they differ by O(1). The packed rows are also compared with the rows run
    separately, which catches positions read wrong; that difference, relative to the logits' scale,
    counts only beyond SEPARATE_TOLERANCE, the numerical noise of low-precision kernels on other shapes.

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
    alone = torch.cat(separate)
    return Probe(cross=(together[lengths[0]:] - swapped[lengths[0]:]).abs().max().item(),
                 apart=((together - alone).abs().max() / alone.abs().max()).item())


def check_packing(probe: Probe, model_type: str) -> Probe:
    """The probe (the backend's own: Backend.packing_probe), or UserError when packing would train on rows
    mixed together."""
    if not probe.passes:
        raise UserError(f"train.packing is true, but in this {model_type} model with "
                        f"transformers {probe.failure()}: set train.packing: false.")
    return probe
