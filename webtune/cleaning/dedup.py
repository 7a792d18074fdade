"""Exact and near-duplicate detection over a whole corpus: first seen wins."""

from rensa import RMinHash, RMinHashLSH

from webtune.cleaning import CleanParams


class Deduplicator:
    """Exact (hash) and near (MinHash LSH, Jaccard-verified) duplicate detection, first seen wins."""

    def __init__(self, params: CleanParams):
        self.threshold = params.near_dup_threshold
        self.exact: dict[bytes, str] = {}
        self.lsh = RMinHashLSH(threshold=params.near_dup_threshold, num_perm=params.minhash_permutations,
                               num_bands=params.minhash_bands)
        self.kept: list[tuple[str, RMinHash]] = []

    def check(self, doc_id: str, key: bytes, mh: RMinHash) -> tuple[str, str] | None:
        if key in self.exact:
            return "exact_duplicate", f"same normalised text as doc {self.exact[key]}"
        for candidate in sorted(self.lsh.query(mh)):
            other_id, other = self.kept[candidate]
            similarity = mh.jaccard(other)
            if similarity >= self.threshold:
                return "near_duplicate", f"estimated Jaccard {similarity:.2f} with doc {other_id}"
        self.exact[key] = doc_id
        self.lsh.insert(len(self.kept), mh)
        self.kept.append((doc_id, mh))
        return None
