"""The format stage's knobs and its train / val / test split.

A pair's split is a pure function of a salted hash of its id: it keeps its split when other pairs are
added or removed, and `format.split_seed` reshuffles every split at once.
"""

import dataclasses
import hashlib

from webtune.params import at_least, between, knob

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class FormatParams:
    max_length: int = knob(at_least(1))
    train_ratio: float = knob(between(0, 1))
    val_ratio: float = knob(between(0, 1))
    split_seed: str = knob()
    batch_rows: int = knob(at_least(1))
    workers: int = knob(at_least(1))
    report_samples: int = knob(at_least(0), report=True)
    system_prompt: str = knob()

    def problems(self):
        if self.train_ratio + self.val_ratio > 1:
            yield "val_ratio", ("format.train_ratio + format.val_ratio is "
                                f"{self.train_ratio + self.val_ratio}, above 1")


def split_of(pair_id: str, *, seed: str, train_ratio: float, val_ratio: float) -> str:
    """Deterministic split from a salted hash of the pair id (uniform in [0, 1))."""
    u = int(hashlib.sha256(f"{seed}\0{pair_id}".encode()).hexdigest()[:15], 16) / 16**15
    if u < train_ratio:
        return "train"
    return "val" if u < train_ratio + val_ratio else "test"
