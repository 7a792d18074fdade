"""cleaning.dedup: exact and near duplicates over a corpus, first seen wins."""

import dataclasses

import pytest

from tests.webtune.cleaning.test_text import prose
from webtune.cleaning.dedup import Deduplicator
from webtune.cleaning.text import dedup_key, minhash


@pytest.fixture
def params(load):
    return load("clean")


def check(dedup, params, doc_id, text):
    return dedup.check(doc_id, dedup_key(text), minhash(text, params))


def test_exact_and_near_duplicates_name_the_first_doc(params):
    base = prose(6, 8)
    near = base.replace("Item 6-7", "Item 6-7 (revised)")
    dedup = Deduplicator(params)
    assert check(dedup, params, "a", base) is None
    exact = ("exact_duplicate", "same normalised text as doc a")
    assert check(dedup, params, "b", "  " + base.upper() + "\n") == exact
    reason, detail = check(dedup, params, "c", near)
    similarity = minhash(near, params).jaccard(minhash(base, params))
    assert (reason, detail) == ("near_duplicate", f"estimated Jaccard {similarity:.2f} with doc a")
    assert check(dedup, params, "d", prose(9, 8)) is None


def test_a_dropped_duplicate_is_not_indexed(params):
    dedup = Deduplicator(params)
    check(dedup, params, "a", prose(6, 8))
    check(dedup, params, "b", prose(6, 8))
    assert check(dedup, params, "c", prose(6, 8)) == ("exact_duplicate", "same normalised text as doc a")
    assert [doc_id for doc_id, _ in dedup.kept] == ["a"]


def test_near_dup_threshold_is_a_knob(params):
    base = prose(6, 8)
    near = base.replace("Item 6-7", "Item 6-7 (revised)")
    dedup = Deduplicator(dataclasses.replace(params, near_dup_threshold=0.999))
    assert check(dedup, params, "a", base) is None
    assert check(dedup, params, "c", near) is None
