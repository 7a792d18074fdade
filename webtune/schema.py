"""Column names and Arrow schemas of every table the pipeline writes.

Every table carries provenance, so any training row can be traced back to the page it came from:
source, url (or file path), fetched_at, the sha256 of the raw content, and a stable doc id.
"""

import hashlib

import pyarrow as pa

# Provenance columns, shared by every table.
PROVENANCE = [
    # sha256(source + "\0" + url)[:16]: stable across re-scrapes
    pa.field("doc_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # source module name: pydoc | files | http | ...
    pa.field("url", pa.string(), nullable=False),  # URL, file path, or pydoc:// address
    pa.field("fetched_at", pa.string(), nullable=False),  # ISO-8601 UTC: when this content was first fetched
    pa.field("content_sha256", pa.string(), nullable=False),  # sha256 of the raw bytes as fetched
]
PROVENANCE_KEYS = tuple(f.name for f in PROVENANCE)

# Raw scrape: one row per fetched document, failures included (fetch_error set, body empty), so
# clean can drop them with a reason instead of the scrape losing them silently.
RAW_DOCS = pa.schema(
    PROVENANCE
    + [
        # text/html | text/markdown | text/plain | application/x-record+json
        pa.field("content_type", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("body", pa.string(), nullable=False),  # decoded text (see io.decode_bytes for the policy)
        pa.field("record", pa.string(), nullable=True),  # a structured record (e.g. a product) as JSON
        pa.field("n_bytes", pa.int64(), nullable=False),  # size of the raw content
        pa.field("n_bad_chars", pa.int64(), nullable=False),  # chars replaced or removed while decoding
        pa.field("fetch_error", pa.string(), nullable=True),  # stable reason when the fetch failed
        pa.field("fetch_detail", pa.string(), nullable=True),  # what exactly failed ("HTTP 404", "image/png")
    ]
)

# Clean documents: extracted, normalised, deduplicated markdown/text.
CLEAN_DOCS = pa.schema(
    PROVENANCE
    + [
        pa.field("content_type", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("record", pa.string(), nullable=True),
        pa.field("n_chars", pa.int64(), nullable=False),
    ]
)

# Rows dropped by any stage, with a stable snake_case reason (datatrove style).
DROPPED = pa.schema(
    PROVENANCE
    + [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        # human-readable context (e.g. which doc it duplicates)
        pa.field("detail", pa.string(), nullable=False),
        pa.field("row_id", pa.string(), nullable=False),  # doc_id or pair_id of what was dropped
    ]
)

# Instruction/response pairs built from clean documents.
PAIRS = pa.schema(
    PROVENANCE
    + [
        pa.field("pair_id", pa.string(), nullable=False),  # sha256(doc_id + task + instruction)[:16]
        pa.field("task", pa.string(), nullable=False),  # doc_qa | product_copy
        pa.field("system", pa.string(), nullable=False),  # system prompt ("" for none)
        pa.field("instruction", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
    ]
)

MESSAGE = pa.struct(
    [
        pa.field("role", pa.string(), nullable=False),  # system | user | assistant
        pa.field("content", pa.string(), nullable=False),
    ]
)

# Chat rows: structured messages plus their rendering, one table per split.
CHAT_ROWS = pa.schema(
    PROVENANCE
    + [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        # val/test: the share of the answer's 13-word shingles in train rows (webtune.splits); train: null
        pa.field("train_overlap", pa.float64(), nullable=True),
        pa.field("messages", pa.list_(MESSAGE), nullable=False),
        pa.field("text", pa.string(), nullable=False),  # rendered by the base's chat format (webtune.formats)
        pa.field("n_tokens", pa.int64(), nullable=False),
        pa.field("n_special_ids", pa.int64(), nullable=False),  # special-token ids the tokenizer produced
        pa.field("n_expected_special_ids", pa.int64(), nullable=False),  # what the structure alone implies
    ]
)


def short_hash(*parts: str) -> str:
    """Stable 16-hex-digit id from string parts (NUL-separated so ("ab","c") != ("a","bc"))."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def doc_id(source: str, url: str) -> str:
    return short_hash(source, url)


def provenance(row: dict) -> dict:
    """The provenance columns of any row (every table carries them)."""
    return {k: row[k] for k in PROVENANCE_KEYS}


def dropped_row(row: dict, *, stage: str, reason: str, detail: str, row_id: str) -> dict:
    """A DROPPED row: what `row` (any table's row) was, which stage dropped it and why."""
    return provenance(row) | {"stage": stage, "reason": reason, "detail": detail, "row_id": row_id}
