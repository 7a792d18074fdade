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
