"""The tiny base's text side: its packaged corpus and the byte-level BPE tokenizer trained on it.

The tokenizer's first ids are harmony's control tokens (0..5), so the base speaks the chat format it is
tuned in; webtune.models.tiny_build trains it on `warmup_corpus()` with `base.tiny.vocab_size`.
"""

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from webtune.formats import harmony, neutralise


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


def warmup_corpus() -> list[str]:
    """The tiny base's corpus: CPython's language reference as the interpreter ships it (pydoc_data).

    Packaged, not scraped: the base depends on nothing the pipeline fetches, so a re-scrape or a clean
    knob never rebuilds it (79 topics, ~465 kB: its 4k BPE vocabulary and warm-up in ~1-2 min).
    """
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]
