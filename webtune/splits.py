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
import re
from collections.abc import Iterable

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


def shingles(text: str) -> set[int]:
    """The text's word 13-gram shingles as 64-bit hashes (lower-cased words, punctuation and spacing
    ignored, so a re-wrapped or re-punctuated copy still matches). A text under 13 words has none.

    blake2b rather than hash(): Python salts str hashes per process, and format's workers must agree."""
    words = _WORD.findall(text.lower())
    return {int.from_bytes(hashlib.blake2b(" ".join(words[i : i + SHINGLE_WORDS]).encode(),
                                           digest_size=8).digest(), "little")
            for i in range(len(words) - SHINGLE_WORDS + 1)}


def train_shingles(texts: Iterable[str]) -> frozenset[int]:
    out: set[int] = set()
    for text in texts:
        out |= shingles(text)
    return frozenset(out)


def overlap(text: str, seen: frozenset[int]) -> float:
    """The share of `text`'s shingles in `seen` (0.0 for a text too short to have any)."""
    own = shingles(text)
    return len(own & seen) / len(own) if own else 0.0
