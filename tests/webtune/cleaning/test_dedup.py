"""cleaning.dedup: the cluster pass's decisions, first kept copy wins, candidates verified by Jaccard."""

import numpy as np
import pytest

from webtune.cleaning.dedup import band_groups, duplicate_docs, duplicate_pairs
from webtune.cleaning.steps import PAIR_KEY


class Sigs:
    """Signatures as the cluster pass reads them, from (task, index) -> (key, doc_id) and pairwise Jaccard."""

    def __init__(self, keys: dict, similar: dict):
        self.keys, self.similar = keys, similar

    def jaccard(self, a, b):
        return self.similar.get((a, b), self.similar.get((b, a), 0.0))

    def key(self, node):
        return self.keys[node][0]

    def doc_id(self, node):
        return self.keys[node][1]


def test_band_groups_rebuild_the_runs_of_equal_band_hashes():
    # datatrove writes (previous, current) per equal neighbour: a run of 3 is two chained records
    dups = np.array([[0, 1, 0, 4], [0, 4, 1, 2], [0, 7, 1, 0]], dtype="<u4")
    assert band_groups(dups) == [[(0, 1), (0, 4), (1, 2)], [(0, 7), (1, 0)]]


def test_exact_then_near_duplicates_name_the_first_kept_doc_in_input_order():
    a, b, c, d = (0, 0), (0, 1), (1, 0), (1, 1)
    sigs = Sigs({a: (b"k1", "A"), b: (b"k1", "B"), c: (b"k2", "C"), d: (b"k3", "D")},
                {(a, b): 1.0, (a, c): 0.85, (b, c): 0.85, (a, d): 0.5})
    drops = duplicate_docs([[a, b, c, d]], sigs, threshold=0.8)
    assert drops == {b: ("exact_duplicate", "same normalised text as doc A"),
                     c: ("near_duplicate", "estimated Jaccard 0.85 with doc A")}


def test_a_band_collision_below_the_threshold_is_kept_and_a_chain_drops_only_what_is_alike():
    # b ~ a and c ~ b, but c is unlike a: b goes, c stays (union-find would drop c with its cluster)
    a, b, c = (0, 0), (0, 1), (0, 2)
    sigs = Sigs({a: (b"1", "A"), b: (b"2", "B"), c: (b"3", "C")}, {(a, b): 0.9, (b, c): 0.9, (a, c): 0.6})
    assert duplicate_docs([[a, b], [b, c], [a, c]], sigs, threshold=0.8) == {
        b: ("near_duplicate", "estimated Jaccard 0.90 with doc A")}
    assert duplicate_docs([[a, b], [b, c], [a, c]], sigs, threshold=0.95) == {}


def write_keys(scratch, task, kind, records):
    folder = scratch / "pairkeys"
    folder.mkdir(parents=True, exist_ok=True)
    np.array(records, dtype=PAIR_KEY).tofile(folder / f"{task:05d}.{kind}.bin")


@pytest.fixture
def pair_scratch(tmp_path):
    # task 0: doc 0 has pairs 0 (q1 -> r1) and 1 (q2 -> r2); doc 1 pair 2 (q1 -> r3)
    # task 1: doc 0 pair 0 (q4 -> r2), doc 1 pair 1 (q5 -> r1)
    write_keys(tmp_path, 0, "instruction", [(1, 0, 0, 0xA0), (2, 0, 1, 0xA1), (1, 1, 2, 0xA2)])
    write_keys(tmp_path, 0, "response", [(11, 0, 0, 0xA0), (12, 0, 1, 0xA1), (13, 1, 2, 0xA2)])
    write_keys(tmp_path, 1, "instruction", [(4, 0, 0, 0xB0), (5, 1, 1, 0xB1)])
    write_keys(tmp_path, 1, "response", [(12, 0, 0, 0xB0), (11, 1, 1, 0xB1)])
    return tmp_path


def test_pairs_repeating_an_earlier_instruction_or_response_are_dropped_naming_it(pair_scratch):
    assert duplicate_pairs(str(pair_scratch), 2, set()) == {
        (0, 2): ("duplicate_instruction", f"same instruction as pair {0xA0:016x}"),
        (1, 0): ("duplicate_response", f"same response as pair {0xA1:016x}"),
        (1, 1): ("duplicate_response", f"same response as pair {0xA0:016x}"),
    }


def test_pairs_of_a_dropped_document_own_nothing(pair_scratch):
    # task 0's doc 0 is a duplicate document: its pairs never reach the output, so they win no key
    assert duplicate_pairs(str(pair_scratch), 2, {(0, 0)}) == {}
