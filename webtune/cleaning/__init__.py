"""Cleaning: per-document steps (text.py), web-quality filters (quality.py), near-duplicate detection
(dedup.py) and pair building (pairs.py), configured by the `clean:` section of params.yaml (CleanParams)."""

import dataclasses

from webtune.cleaning.pairs import PairsParams
from webtune.cleaning.quality import QualityParams
from webtune.params import at_least, between, knob, one_of


@dataclasses.dataclass(frozen=True)
class CleanParams:
    unicode_form: str = knob(one_of("NFC", "NFKC", "NFD", "NFKD"))
    max_bad_char_ratio: float = knob(between(0, 1))
    min_chars: int = knob(at_least(0))
    max_chars: int = knob(at_least(1))
    boilerplate_max_words: int = knob(at_least(0))
    boilerplate_patterns: tuple[str, ...] = knob()
    mask_emails: bool = knob()
    mask_secrets: bool = knob()
    near_dup_threshold: float = knob(between(0, 1))
    minhash_permutations: int = knob(at_least(1))
    minhash_bands: int = knob(at_least(1))
    shingle_words: int = knob(at_least(1))
    seed: int = knob()
    tasks: int = knob(at_least(1))
    quality: QualityParams = knob()
    pairs: PairsParams = knob()

    def problems(self):
        if self.minhash_permutations % self.minhash_bands:
            yield "minhash_bands", (f"must divide clean.minhash_permutations ({self.minhash_permutations}), "
                                    f"got {self.minhash_bands}")
        if self.min_chars > self.max_chars:
            yield "min_chars", f"{self.min_chars} is above clean.max_chars ({self.max_chars})"
