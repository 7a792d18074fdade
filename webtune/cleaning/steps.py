"""clean's per-task work as datatrove pipeline steps (the first and last of its four passes).

    score:  RawShards -> Score -> ScoredShard -> RensaSignature      (clean.tasks tasks)
    write:  WriteClean                                               (clean.tasks tasks)

Score runs the per-document core (webtune.cleaning.text.score_doc, then the document's pairs) and
writes the documents it drops, with their reasons, to a scratch shard; ScoredShard keeps the survivors
(text, pairs, dedup key) for the write pass; RensaSignature writes their MinHash signatures, which
datatrove's bucket step and our cluster step (webtune.cleaning.dedup) turn into dedup decisions; the
write pass applies those decisions and writes the stage's output shards. Scratch folders are per task
(`{rank:05d}`), so a re-run after a kill redoes only the tasks datatrove has not marked complete.
"""

import collections
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from webtune import schema, shards
from webtune.cleaning import CleanParams
from webtune.cleaning.pairs import build_pairs
from webtune.cleaning.text import dedup_key, minhash, score_doc

STAGE = "clean"
# Survivors of the score pass: a clean document with its number of pairs and the reasons of the sections
# that did not become pairs (counted by the write pass, for documents it keeps); their pairs are PAIRS.
SCORED = pa.schema(list(schema.CLEAN_DOCS) + [
    pa.field("n_pairs", pa.int32(), nullable=False),
    pa.field("skipped", pa.list_(pa.string()), nullable=False),
])
# A pair's instruction or response key (the first 8 bytes of its dedup key), its document's index among
# the task's survivors, its own index among their pairs and its pair_id (16 hex digits as an integer):
# what the cluster step deduplicates pairs by and names the first copy with.
PAIR_KEY = np.dtype([("hash", "<u8"), ("doc", "<u4"), ("pair", "<u4"), ("id", "<u8")])  # id: pair_id
KEY_BYTES = 16 + 8  # per signed document: its dedup key, then its doc_id (16 hex digits) as bytes


class RawShards(BaseDiskReader):
    """The scrape's shards, a contiguous run per task (webtune.shards.contiguous_shard), every row a
    Document (failed fetches too: their drop reason is clean's to record)."""

    name = "raw shards"

    def __init__(self, folder: str | Path):
        super().__init__(str(folder), glob_pattern=f"*{shards.SUFFIX}", recursive=False)

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=512, columns=schema.RAW_DOCS.names):
                for row in batch.to_pylist():
                    yield Document(text=row["body"], id=row["doc_id"], metadata={"raw": row})

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        files = self.data_folder.list_files(recursive=False, glob_pattern=f"*{shards.SUFFIX}")
        yield from self.read_files_shard([files[i] for i in shards.contiguous_shard(len(files), rank,
                                                                                     world_size)])


def score_and_pair(raw: dict, params: CleanParams) -> tuple[dict, bool, collections.Counter]:
    """One raw row -> (its DROPPED row, True) or (its SCORED row, False), and what cleaning counted."""
    s = score_doc(raw, params)
    if s["drop"]:
        reason, detail = s["drop"]
        return (schema.dropped_row(raw, stage=STAGE, reason=reason, detail=detail, row_id=raw["doc_id"]),
                True, s["stats"])
    doc = schema.provenance(raw) | {"content_type": raw["content_type"], "title": s["title"],
                                    "text": s["text"], "record": s["record"], "n_chars": len(s["text"])}
    pairs, skipped = build_pairs(doc, params.pairs)
    return (doc | {"n_pairs": len(pairs), "skipped": [r for r, _ in skipped], "pairs": pairs,
                   "dedup_key": s["dedup_key"]}, False, s["stats"])


class Score(PipelineStep):
    """score_doc and pairs for every raw document; drops to `drops/`, counts to `counts/`."""

    name = "score"
    type = "webtune"

    def __init__(self, params: CleanParams, scratch: str | Path):
        super().__init__()
        self.params, self.scratch = params, str(scratch)

    def run(self, data, rank: int = 0, world_size: int = 1):
        drops = shards.Sink(f"{self.scratch}/drops", rank, schema.DROPPED)
        counts = collections.Counter()
        for doc in data:
            counts["docs_in"] += 1
            row, dropped, stats = score_and_pair(doc.metadata["raw"], self.params)
            counts.update(stats)
            if dropped:
                drops.add(row)
            else:
                yield Document(text=row["text"], id=row["doc_id"], metadata={"row": row})
        drops.close()
        with get_datafolder(f"{self.scratch}/counts").open(f"{rank:05d}.json", "w") as f:
            json.dump(counts, f)


class ScoredShard(PipelineStep):
    """Keeps each surviving document (`docs/`) and its pairs (`pairs/`) for the write pass, in the order
    the signatures index them, and the pairs' keys (`pairkeys/`) for the cluster pass."""

    name = "scored shard"
    type = "webtune"

    def __init__(self, scratch: str | Path):
        super().__init__()
        self.scratch = str(scratch)

    def run(self, data, rank: int = 0, world_size: int = 1):
        docs = shards.Sink(f"{self.scratch}/docs", rank, SCORED, batch=512)
        pairs = shards.Sink(f"{self.scratch}/pairs", rank, schema.PAIRS)
        keys = {"instruction": [], "response": []}  # PAIR_KEY records: 24 bytes a pair and kind
        n_pairs = 0
        for i, doc in enumerate(data):
            row = doc.metadata["row"]
            docs.add({k: row[k] for k in SCORED.names})
            for p in row["pairs"]:
                pairs.add(p)
                for kind in keys:
                    keys[kind].append((int.from_bytes(dedup_key(p[kind])[:8], "little"), i, n_pairs,
                                       int(p["pair_id"], 16)))
                n_pairs += 1
            yield doc
        docs.close()
        pairs.close()
        folder = get_datafolder(f"{self.scratch}/pairkeys")
        for kind, records in keys.items():
            with folder.open(f"{rank:05d}.{kind}.bin", "wb") as f:
                f.write(np.array(records, dtype=PAIR_KEY).tobytes())


class _Unused(WordTokenizer):
    """datatrove's signature step loads a word tokenizer (spaCy for English); ours shingles itself."""

    def word_tokenize(self, text):
        raise NotImplementedError

    sent_tokenize = span_tokenize = word_tokenize


def minhash_config(params: CleanParams) -> MinhashConfig:
    # precision 32: rensa's hashes are 32-bit; sha1 only because the default xxhash name fails with
    # xxhash 4 (its hash function is never called: get_shingles below hashes with rensa).
    return MinhashConfig(n_grams=params.shingle_words, num_buckets=params.minhash_bands,
                         hashes_per_bucket=params.minhash_permutations // params.minhash_bands,
                         seed=params.seed, hash_config=HashConfig(precision=32, hash_fc="sha1"))


class RensaSignature(MinhashDedupSignature):
    """datatrove's signature step (band files it sorts and the bucket step merges) with rensa's MinHash,
    ~20x faster than its numpy one; it also keeps each document's whole signature (`full/`) and dedup key
    and id (`keys/`), which the cluster step needs to verify candidates and name the kept copy."""

    def __init__(self, params: CleanParams, scratch: str | Path):
        super().__init__(f"{scratch}/sigs", config=minhash_config(params), language=_Unused())
        self.params, self.scratch = params, str(scratch)

    def get_shingles(self, text: str) -> np.ndarray:
        return np.asarray(minhash(text, self.params).digest(), dtype=np.uint32)

    def get_signature(self, digest: np.ndarray) -> list[list[int]]:
        self._full.write(digest.tobytes())
        return digest.reshape(self.config.num_buckets, -1).tolist()

    def run(self, data, rank: int = 0, world_size: int = 1):
        folder = get_datafolder(self.scratch)
        with folder.open(f"full/{rank:05d}.u32", "wb") as self._full, \
                folder.open(f"keys/{rank:05d}.bin", "wb") as keys:
            def tap():
                for doc in data:
                    keys.write(doc.metadata["row"]["dedup_key"] + bytes.fromhex(doc.id))
                    yield doc
            super().run(tap(), rank, world_size)
