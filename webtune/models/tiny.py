"""The fast harmony base for tests and `-S base.model=tiny-gpt-oss`: a tiny gpt-oss built from a config.

`base.tiny` (TinyParams, this variant's section) is the whole recipe. Four small modules build it:

    tiny.py            the recipe and the model: a ~0.65 M-param gpt-oss of the real architecture at toy
                       width, initialised from `base.tiny.seed`
    tiny_tokenizer.py  the packaged corpus (`warmup_corpus`: CPython's bundled language reference) and the
                       byte-level BPE tokenizer trained on it (harmony's control tokens are its ids 0..5)
    tiny_warmup.py     a short causal-LM warm-up on the same corpus, so the base is not random noise (a
                       random base makes "the adapter beats the base" trivially true)
    tiny_build.py      `build_tiny_base`: tokenizer, model and warm-up saved into a base folder
                       (webtune.models), with base.json recording the recipe's hash
"""

import dataclasses

import torch
from transformers import GptOssConfig, GptOssForCausalLM

from webtune.formats import harmony
from webtune.params import at_least, knob, positive


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


def build_tiny_model(params: TinyParams, vocab_size: int) -> GptOssForCausalLM:
    """A gpt-oss model of the real architecture at toy width, initialised from params.seed."""
    # Divisibility of heads and widths is checked when params load (TinyParams.problems).
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

