"""webtune.splits: the train / val / test split by document and the word 13-gram shingles that the format
stage's leakage check compares."""

import hashlib
import os
import subprocess
import sys

from webtune.schema import short_hash
from webtune.splits import (
    SHINGLE_WORDS,
    SPLITS,
    distinct_shingles,
    overlap,
    shingle_hashes,
    shingles,
    split_of,
    train_shingles,
)


def words(start: int, stop: int) -> str:
    """Distinct words w{start} .. w{stop - 1}: a text with exactly stop - start words."""
    return " ".join(f"w{k}" for k in range(start, stop))


# --- split_of ------------------------------------------------------------------------------------


def test_split_is_deterministic_and_close_to_the_ratios():
    ids = [short_hash(str(i)) for i in range(5000)]
    splits = [split_of(i, seed="s", train_ratio=0.8, val_ratio=0.1) for i in ids]
    assert splits == [split_of(i, seed="s", train_ratio=0.8, val_ratio=0.1) for i in ids]
    share = {s: splits.count(s) / len(splits) for s in SPLITS}
    assert abs(share["train"] - 0.8) < 0.02 and abs(share["val"] - 0.1) < 0.015
    other = [split_of(i, seed="t", train_ratio=0.8, val_ratio=0.1) for i in ids]
    assert other != splits, "the salt must change the split"


def test_ratios_at_the_ends_send_every_document_to_one_split():
    ids = [f"d{i}" for i in range(200)]
    assert {split_of(i, seed="s", train_ratio=1.0, val_ratio=0.0) for i in ids} == {"train"}
    assert {split_of(i, seed="s", train_ratio=0.0, val_ratio=1.0) for i in ids} == {"val"}
    assert {split_of(i, seed="s", train_ratio=0.0, val_ratio=0.0) for i in ids} == {"test"}


# --- shingles and overlap ------------------------------------------------------------------------


def test_a_text_under_13_words_has_no_shingles_and_13_words_have_exactly_one():
    assert SHINGLE_WORDS == 13
    assert shingles(words(0, 12)) == set()
    assert len(shingles(words(0, 13))) == 1
    assert len(shingles(words(0, 20))) == 20 - 13 + 1
    assert shingles("") == set()


def test_case_punctuation_and_spacing_do_not_change_the_shingles():
    text = "the quick brown fox jumps over the lazy dog while the cat sleeps soundly"
    rewrapped = "The QUICK, brown fox -- jumps over\n\nthe lazy dog; while the (cat) sleeps   soundly!"
    assert len(shingles(text)) == 2
    assert shingles(rewrapped) == shingles(text)
    assert shingles(text.replace("lazy", "sleepy")).isdisjoint(shingles(text))  # one word changed: no match


def test_shingles_are_the_same_in_every_process():
    # Workers must agree with the process that collected train's shingles, whatever PYTHONHASHSEED is.
    text = " ".join(map(str, range(15)))
    code = f"from webtune.splits import shingles; print(sorted(shingles({text!r})))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env=os.environ | {"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert outs == {f"{sorted(shingles(text))}\n"}


def reference_shingle(words: list[str]) -> int:
    """One shingle's hash one step at a time in Python ints: blake2b of each word, chained through
    splitmix64's finalizer."""
    h, mask = 0, 2**64 - 1
    for w in words:
        h ^= int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & mask
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & mask
        h ^= h >> 31
    return h


def test_the_vectorised_hash_is_the_chained_word_hash():
    text = "One two, three FOUR five six seven eight nine ten eleven twelve thirteen fourteen"
    words = text.lower().replace(",", "").split()
    assert shingles(text) == {reference_shingle(words[:13]), reference_shingle(words[1:])}


def test_shingle_hashes_never_span_two_texts_and_keep_word_order():
    a, b, short = words(0, 14), words(100, 113), words(0, 12)
    hashes, text = shingle_hashes([a, short, b, f"{a} {a}"])
    assert text.tolist() == [0, 0, 2] + [3] * 16  # a text under 13 words has none
    first_two = [reference_shingle(a.split()[i : i + 13]) for i in range(2)]
    assert hashes[:3].tolist() == [*first_two, reference_shingle(b.split())]
    assert hashes[3 + 14 :].tolist() == first_two  # windows 14 and 15 of "a a" repeat its first two


def test_distinct_shingles_drops_repeats_within_a_text_not_across_texts():
    a = words(0, 14)
    distinct, text = distinct_shingles([a, f"{a} {a}"])
    assert len(distinct) == 2 + 14
    assert sorted(zip(text.tolist(), distinct.tolist(), strict=True)) == sorted(
        {(0, h) for h in shingles(a)} | {(1, h) for h in shingles(f"{a} {a}")})
    assert distinct.tolist() == sorted(distinct.tolist())  # by shingle


def test_train_shingles_is_the_union_of_every_texts_shingles():
    a, b = words(0, 14), words(100, 113)
    assert train_shingles([a, b]) == shingles(a) | shingles(b)
    assert len(train_shingles([a, b, a])) == 2 + 1
    assert train_shingles([]) == frozenset()


def test_overlap_is_the_share_of_the_answers_shingles_that_train_holds():
    answer = words(0, 16)  # 4 shingles: w0..w12, w1..w13, w2..w14, w3..w15
    half = train_shingles([words(0, 14)])  # holds the first two
    assert overlap(answer, half) == 0.5
    assert overlap(answer, train_shingles([words(0, 13)])) == 0.25
    assert overlap(answer, train_shingles([f"intro words {answer} and more"])) == 1.0
    assert overlap(answer, train_shingles([words(1, 13)])) == 0.0  # 12 shared words are not a shingle
    assert overlap(answer, frozenset()) == 0.0


def test_an_answer_too_short_for_a_shingle_overlaps_nothing():
    seen = train_shingles([words(0, 40)])
    assert overlap(words(0, 12), seen) == 0.0  # every word is in train, but no 13-word run to compare
