"""Toy inputs shared by the tests: a corpus from CPython's bundled docs, toy widths of the tiny base and
throwaway tokenizers trained in-process."""

import functools
from pydoc_data.topics import topics

TEXTS = list(topics.values())[:30]  # ~170 kB
# Toy widths: 32 wide, 512-token vocab, 15 steps of 4 x 32 tokens (seconds, not minutes).
SMALL = dict(  # base.tiny
    vocab_size=512,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    num_experts=4,
    experts_per_token=2,
    max_position_embeddings=512,
    warmup_steps=15,
    warmup_batch_size=4,
    warmup_seq_len=32,
    warmup_lr=0.003,
    seed=3407,
    threads=1,  # toy tensors gain nothing from a second thread, and a busy machine makes 2 threads crawl
)

# train.lora for the tiny gpt-oss (params.yaml's are the dense SmolLM2's): attention, the fused expert
# weights and the output head, where a ~1 M-param model's capacity is.
TINY_LORA = dict(target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
                 target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                 modules_to_save=("lm_head",))


def plain_tokenizer():
    """A byte-level BPE trained in-process with no special token at all: it fits no chat format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(TEXTS[:5], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


@functools.lru_cache
def format_tokenizer(fmt):
    """A byte-level BPE trained in-process (~19 kB of docs, 400 ids) whose specials are `fmt`'s control
    tokens and whose chat template is `fmt`'s: built as webtune.models.tiny_tokenizer.train_tokenizer
    builds harmony's.
    Cached per format (a ChatFormat is a module singleton); treat it as read-only."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from webtune.formats import neutralise

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    # trim_offsets=False: the {% generation %} mask is computed from character offsets (as in
    # tiny_tokenizer.py)
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(fmt.control_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([neutralise(t) for t in TEXTS[:5]], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token=fmt.stop_tokens[0],
                                   pad_token=fmt.pad_token, chat_template=fmt.chat_template)
