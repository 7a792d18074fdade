"""Toy inputs shared by the tests: a corpus from CPython's bundled docs and toy widths of the tiny base."""

from pydoc_data.topics import topics

TEXTS = list(topics.values())[:30]  # ~170 kB
# Toy widths: 32 wide, 512-token vocab, 15 steps of 4 x 32 tokens (seconds, not minutes).
SMALL = dict(
    model="tiny-gpt-oss",
    revision="main",
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
