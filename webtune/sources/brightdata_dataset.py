"""Bright Data Web Scraper API source: trigger a dataset collection, poll it, download its snapshot.

Selected with `scrape.source: brightdata_dataset`; knobs in `scrape.brightdata_dataset`, token from
BRIGHTDATA_API_TOKEN (environment or `.env`). The default dataset is Amazon products
(`gd_l7q7dkf244hwjntr0`), collected by product URL, or discovered by keyword, category URL or
best-sellers URL (`discover_by`). A collection is triggered here; polling and downloading its snapshot
are brightdata_snapshot's, retries and the 429 policy the shared client's (brightdata_client).

Never paying twice: a collection is identified by a hash of what defines it (dataset id, discovery mode,
inputs, limit per input). Its snapshot id goes to the ledger the moment the trigger answers, before any
polling; a re-run of the same collection polls that id, and downloaded parts are kept, so a killed run
never triggers a second collection nor downloads a part twice. The trigger itself is never retried
after an ambiguous failure (a 5xx or a dropped connection may have started a job that we would pay for
twice): only a 429, which means the trigger was refused, is retried. A fresh collection of the same
inputs happens only when the user bumps `refresh`.

Records with `error`/`error_code` (include_errors=true: a dead page, a blocked input) become failed rows
with that code as the reason; a snapshot without a single record fails the stage.
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Unpack

from webtune.errors import UserError
from webtune.params import api_url, at_least, between, knob, one_of, positive
from webtune.sources import EmptySourceError, ScrapeParams, SourceError, record_row
from webtune.sources.brightdata_client import TOKEN_ENV as TOKEN_ENV  # what token_env reads: a paid source
from webtune.sources.brightdata_client import BrightDataClient, Hooks
from webtune.sources.brightdata_snapshot import SOURCE, DatasetAPI, SnapshotError, download
from webtune.sources.http import url_problem
from webtune.sources.ledger import Ledger, Snapshot


@dataclasses.dataclass(frozen=True)
class DatasetParams:
    dataset_id: str = knob(lambda v: None if v.startswith("gd_") else f"{v!r} is not a dataset id (gd_...)")
    discover_by: str = knob(one_of("", "keyword", "category_url", "best_sellers_url"))
    inputs: tuple[str, ...] = knob()
    limit_per_input: int = knob(at_least(0))
    api_url: str = knob(api_url)
    poll_interval_s: float = knob(positive)
    poll_timeout_s: float = knob(positive)
    timeout_s: float = knob(positive)
    retries: int = knob(at_least(0))
    backoff_s: float = knob(at_least(0))
    stop_at_429s: int = knob(between(1, 24))
    part_records: int = knob(lambda v: None if v == 0 or v >= 1000 else f"must be 0 or >= 1000, got {v!r}")
    refresh: int = knob(at_least(0))


PARAMS = DatasetParams  # this variant's section (webtune.registry; webtune.params builds it)

# The input field each discovery mode sends. best_sellers_url: public client code sends category_url;
# no official page confirms the key (REFERENCE-APIS section 6), so it lives here, in one place.
INPUT_FIELD = {"": "url", "keyword": "keyword", "category_url": "url", "best_sellers_url": "category_url"}


def fetch(params: ScrapeParams, *, sources_dir, now: Callable[[], str], ledger: Ledger, token: str,
          **hooks: Unpack[Hooks]) -> Iterator[dict]:
    """Yield one RAW_DOCS row per snapshot record (error records as failed rows), in snapshot order.

    `hooks`: fake time for tests, the stage's progress (brightdata_client.Hooks).
    """
    del sources_dir
    knobs = params.brightdata_dataset
    body = trigger_body(knobs)
    key = collection_key(knobs)
    collections = ledger.scope(SOURCE, generation=knobs.refresh)
    with BrightDataClient(token, knobs, **hooks) as client:
        api = DatasetAPI(client, knobs)
        snapshot = collections.snapshot(key)
        if snapshot is None:
            snapshot = Snapshot(trigger(api, knobs, body), knobs.dataset_id, now(), "triggered")
            collections.save_snapshot(key, snapshot)  # before polling
            ledger.counts["triggered"] += 1
            client.progress(
                f"scrape: triggered {knobs.dataset_id} for {len(body)} inputs: snapshot "
                f"{snapshot.snapshot_id} (kept in the ledger; a re-run resumes it)"
            )
        else:
            ledger.counts["resumed"] += 1
            client.progress(
                f"scrape: resuming snapshot {snapshot.snapshot_id} ({snapshot.status}, triggered "
                f"{snapshot.triggered_at})"
            )
        if snapshot.status != "downloaded":
            status = api.wait_ready(snapshot.snapshot_id, refresh=knobs.refresh)
            collections.save_snapshot(key, dataclasses.replace(snapshot, status=status))
            download(api, ledger, snapshot.snapshot_id, refresh=knobs.refresh)
            snapshot = dataclasses.replace(snapshot, status="downloaded")
            collections.save_snapshot(key, snapshot)
    records = snapshot_records(ledger, snapshot.snapshot_id)
    if not records:
        raise EmptySourceError(
            f"snapshot {snapshot.snapshot_id} of {knobs.dataset_id} has no records: check "
            f"scrape.{SOURCE}.inputs (an empty result is not billed)"
        )
    return rows(records, snapshot=snapshot, ledger=ledger)


def trigger_body(knobs: DatasetParams) -> list[dict]:
    """The trigger's JSON array, one object per input; SourceError naming a bad input."""
    if not knobs.inputs:
        raise EmptySourceError(
            f"scrape.{SOURCE}.inputs is empty: list product URLs, or keywords with discover_by: keyword"
        )
    field = INPUT_FIELD[knobs.discover_by]
    seen: dict[str, int] = {}
    for i, value in enumerate(knobs.inputs):
        problem = (None if value.strip() else "is empty") if field == "keyword" else url_problem(value)
        if problem:
            raise SourceError(f"scrape.{SOURCE}.inputs[{i}]: {value!r} {problem}")
        if value in seen:
            raise SourceError(f"scrape.{SOURCE}.inputs[{i}]: {value!r} repeats inputs[{seen[value]}]")
        seen[value] = i
    return [{field: value} for value in knobs.inputs]


def collection_key(knobs: DatasetParams) -> str:
    """What identifies a collection: the same key means the same (already paid) snapshot."""
    defining = {
        "dataset_id": knobs.dataset_id,
        "discover_by": knobs.discover_by,
        "inputs": list(knobs.inputs),
        "limit_per_input": knobs.limit_per_input,
    }
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()


def trigger(api: DatasetAPI, knobs: DatasetParams, body: list[dict]) -> str:
    """Start the collection; its snapshot id. Only a 429 is retried (see the module docstring)."""
    query = {"dataset_id": knobs.dataset_id, "include_errors": "true"}
    if knobs.discover_by:
        query |= {"type": "discover_new", "discover_by": knobs.discover_by}
    payload: list | dict = body
    if knobs.limit_per_input:
        payload = {"input": body, "limit_per_input": knobs.limit_per_input}
    what = f"trigger {knobs.dataset_id}"
    response = api.call(
        "POST", f"{api.base}/trigger", params=query, json=payload, what=what, retry_transient=False
    )
    if response.status_code != 200:
        raise UserError(
            f"{what}: HTTP {response.status_code}: {api.text(response)} (no collection started)"
        )
    try:
        snapshot_id = response.json()["snapshot_id"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{what}: HTTP 200 without a snapshot_id: {api.text(response)}") from None
    if not isinstance(snapshot_id, str) or not snapshot_id:
        raise UserError(f"{what}: snapshot_id {snapshot_id!r} is not an id")
    return snapshot_id


def snapshot_records(ledger: Ledger, snapshot_id: str) -> list[dict]:
    """The snapshot's records, parts in order; SnapshotError for a part that is not an array of objects."""
    records = []
    for part, body in sorted(ledger.parts(snapshot_id).items()):
        try:
            data = json.loads(body)
        except ValueError as e:
            ledger.forget_parts(snapshot_id)  # a re-run downloads it again instead of failing forever
            raise SnapshotError(
                f"snapshot {snapshot_id} part {part}: not JSON ({e}); run again to download it again"
            ) from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise SnapshotError(f"snapshot {snapshot_id} part {part}: expected a JSON array of records")
        records += data
    return records


def rows(records: list[dict], *, snapshot: Snapshot, ledger: Ledger) -> Iterator[dict]:
    """RAW_DOCS rows; a record repeated in the snapshot (discovery can list a product twice) is kept once."""
    seen = set()
    for i, record in enumerate(records):
        row = record_row(
            record,
            source=SOURCE,
            fallback_url=f"brightdata:{snapshot.snapshot_id}#{i}",
            fetched_at=snapshot.triggered_at,
        )
        if row["doc_id"] in seen:
            ledger.counts["duplicate_records"] += 1
            continue
        seen.add(row["doc_id"])
        ledger.counts["records" if row["fetch_error"] is None else "error_records"] += 1
        yield row
