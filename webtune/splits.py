"""The format stage's knobs, its train / val / test split by document, and the leakage check between splits.

A document's split is a pure function of a salted hash of its doc id, and every pair of a document goes
where its document goes: test answers come from pages never trained on, a document keeps its split when
others are added or removed, and `format.split_seed` reshuffles every split at once.

Pages of one site still share text (a paragraph quoted on two pages, a table repeated), so a val or test
answer is also checked against everything train holds: word 13-gram shingles, as GPT-3's contamination
study and datatrove's decontamination use (long enough that a shared one is copied text, not a common
phrase). A row whose answer shares more than `format.leak_threshold` of its shingles with train text is
dropped with reason leaks_train.
"""

import dataclasses
import hashlib
import itertools
import re
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from webtune.params import at_least, between, knob

SPLITS = ("train", "val", "test")
SHINGLE_WORDS = 13
_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True)
class FormatParams:
    max_length: int = knob(at_least(1))
    train_ratio: float = knob(between(0, 1))
    val_ratio: float = knob(between(0, 1))
    split_seed: str = knob()
    leak_threshold: float = knob(between(0, 1))
    batch_rows: int = knob(at_least(1))
    report_samples: int = knob(at_least(0), report=True)
    system_prompt: str = knob()

    def problems(self):
        if self.train_ratio + self.val_ratio > 1:
            yield "val_ratio", ("format.train_ratio + format.val_ratio is "
                                f"{self.train_ratio + self.val_ratio}, above 1")


def split_of(doc_id: str, *, seed: str, train_ratio: float, val_ratio: float) -> str:
    """Deterministic split of a document from a salted hash of its id (uniform in [0, 1))."""
    u = int(hashlib.sha256(f"{seed}\0{doc_id}".encode()).hexdigest()[:15], 16) / 16**15
    if u < train_ratio:
        return "train"
    return "val" if u < train_ratio + val_ratio else "test"


def shingle_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every word 13-gram shingle of each text as a 64-bit hash, and the index of its text: two arrays
    in text order, a text's shingles in word order, repeats kept (lower-cased words, punctuation and
    spacing ignored, so a re-wrapped or re-punctuated copy still matches). A text under 13 words has
    none.

    Vectorised over all the texts at once (0.4 us a word, against 1.15 us to blake2b each shingle's
    joined words in Python): each distinct word is hashed once (blake2b, not hash(): Python salts str
    hashes per process, and format's workers must agree), then a shingle's hash chains its 13 word
    hashes through splitmix64's finalizer, h = mix(h ^ word). mix is a bijection, so two shingles
    collide only by a 2^-64 chance, as two blake2b digests would: only membership is ever compared."""
    words = [_WORD.findall(t.lower()) for t in texts]
    n_words = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    codes, vocab = pd.factorize(np.array(list(itertools.chain.from_iterable(words)), dtype=object))
    n = len(codes) - SHINGLE_WORDS + 1  # windows over all the words, some across two texts
    if n <= 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    word_hash = np.frombuffer(b"".join(hashlib.blake2b(w.encode(), digest_size=8).digest() for w in vocab),
                              dtype="<u8")[codes]
    h = np.zeros(n, dtype=np.uint64)
    for k in range(SHINGLE_WORDS):
        h ^= word_hash[k : k + n]
        _mix(h)
    text = np.repeat(np.arange(len(texts)), n_words)
    inside = text[:n] == text[SHINGLE_WORDS - 1 :]  # the window's first and last word in one text
    return h[inside], text[:n][inside]


def _mix(x: np.ndarray) -> None:
    """splitmix64's finalizer, in place (uint64 arithmetic wraps): every input bit reaches every
    output bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)


def distinct_shingles(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """shingle_hashes less the repeats within a text, sorted by shingle, then text (a stable sort
    of the shingles keeps the texts in order: ~5x faster than np.lexsort or np.unique)."""
    h, text = shingle_hashes(texts)
    order = np.argsort(h, kind="stable")
    h, text = h[order], text[order]
    first = np.ones(len(h), dtype=bool)
    first[1:] = (h[1:] != h[:-1]) | (text[1:] != text[:-1])
    return h[first], text[first]


def shingles(text: str) -> set[int]:
    """One text's distinct shingles (shingle_hashes)."""
    return set(shingle_hashes([text])[0].tolist())


def train_shingles(texts: Iterable[str]) -> frozenset[int]:
    return frozenset(shingle_hashes(list(texts))[0].tolist())


def overlap(text: str, seen: frozenset[int]) -> float:
    """The share of `text`'s shingles in `seen` (0.0 for a text too short to have any)."""
    own = shingles(text)
    return len(own & seen) / len(own) if own else 0.0
