"""Bright Data Web Scraper API source (flow A): trigger a dataset collection, poll it, download its snapshot.

Selected with `scrape.source: brightdata_dataset`; knobs in `scrape.brightdata_dataset`, token from
BRIGHTDATA_API_TOKEN (environment or `.env`). The default dataset is Amazon products
(`gd_l7q7dkf244hwjntr0`), collected by product URL, or discovered by keyword, category URL or
best-sellers URL (`discover_by`). Three calls, as the datasets v3 API documents them:

    POST {api}/datasets/v3/trigger?dataset_id=..&include_errors=true[&type=discover_new&discover_by=..]
    GET  {api}/datasets/v3/progress/{snapshot_id}     starting/running/collecting/digesting -> ready | failed
    GET  {api}/datasets/v3/snapshot/{snapshot_id}/parts, then ?format=json&batch_size=N&part=k for each part

Never paying twice: a collection is identified by a hash of what defines it (dataset id, discovery mode,
inputs, limit per input). Its snapshot id goes to the ledger the moment the trigger answers, before any
polling; a re-run of the same collection polls that id, and downloaded parts are kept, so a killed run
never triggers a second collection nor downloads a part twice. The trigger itself is never retried
after an ambiguous failure (a 5xx or a dropped connection may have started a job that we would pay for
twice): only a 429, which means the trigger was refused, is retried. A fresh collection of the same
inputs happens only when the user bumps `refresh`.

Why not brightdata-sdk 2.5.2's dataset client: its trigger raises on a 429 without its Retry-After,
its progress call turns any non-200 (a 429, a 5xx) into "error", it cannot download a snapshot in parts,
and its Amazon helper matches records to inputs by position and returns `dead_page` rows as successes
(REFERENCE-APIS section 6).

Records with `error`/`error_code` (include_errors=true: a dead page, a blocked input) become failed rows
with that code as the reason; a snapshot without a single record fails the stage.
"""

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator

import requests

from webtune import secrets
from webtune.errors import UserError
from webtune.params import api_url, at_least, between, knob, one_of, positive
from webtune.sources import EmptySourceError, ScrapeParams, SourceError, record_row
from webtune.sources.brightdata_unlocker import TOKEN_ENV, AuthRefusedError, one_line
from webtune.sources.http import parse_retry_after, url_problem
from webtune.sources.ledger import Ledger, Snapshot
from webtune.sources.ratelimit import BACKOFF_429_S, RateLimitFuse


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

SOURCE = "brightdata_dataset"
FUSE_WINDOW_S = 300.0
PENDING = ("starting", "running", "collecting", "digesting", "building", "in_progress")  # keep polling
# The input field each discovery mode sends. best_sellers_url: public client code sends category_url;
# no official page confirms the key (REFERENCE-APIS section 6), so it lives here, in one place.
INPUT_FIELD = {"": "url", "keyword": "keyword", "category_url": "url", "best_sellers_url": "category_url"}


class SnapshotError(UserError):
    """A snapshot failed, expired or did not finish in time: the message names its id and what to do."""


def fetch(
    params: ScrapeParams,
    *,
    sources_dir,
    now: Callable[[], str],
    ledger: Ledger,
    token: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[dict]:
    """Yield one RAW_DOCS row per snapshot record (error records as failed rows), in snapshot order."""
    del sources_dir
    knobs = params.brightdata_dataset
    body = trigger_body(knobs)
    key = collection_key(knobs)
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {token}"
        api = DatasetAPI(session, knobs, token=token, sleep=sleep, clock=clock)
        snapshot = ledger.snapshot(SOURCE, key, generation=knobs.refresh)
        if snapshot is None:
            snapshot = Snapshot(api.trigger(body), knobs.dataset_id, now(), "triggered")
            ledger.save_snapshot(SOURCE, key, generation=knobs.refresh, snapshot=snapshot)  # before polling
            ledger.counts["triggered"] += 1
            print(
                f"scrape: triggered {knobs.dataset_id} for {len(body)} inputs: snapshot "
                f"{snapshot.snapshot_id} (kept in the ledger; a re-run resumes it)",
                file=sys.stderr,
                flush=True,
            )
        else:
            ledger.counts["resumed"] += 1
            print(
                f"scrape: resuming snapshot {snapshot.snapshot_id} ({snapshot.status}, triggered "
                f"{snapshot.triggered_at})",
                file=sys.stderr,
                flush=True,
            )
        if snapshot.status != "downloaded":
            status = api.wait_ready(snapshot.snapshot_id, refresh=knobs.refresh)
            ledger.save_snapshot(
                SOURCE, key, generation=knobs.refresh, snapshot=dataclasses.replace(snapshot, status=status)
            )
            download(api, ledger, snapshot.snapshot_id, refresh=knobs.refresh)
            snapshot = dataclasses.replace(snapshot, status="downloaded")
            ledger.save_snapshot(SOURCE, key, generation=knobs.refresh, snapshot=snapshot)
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


class DatasetAPI:
    """The datasets-v3 calls: the 429 policy, retries on reads, errors that name the snapshot."""

    def __init__(
        self,
        session: requests.Session,
        knobs: DatasetParams,
        *,
        token: str,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ):
        self.session, self.knobs, self.token = session, knobs, token
        self.sleep, self.clock = sleep, clock
        self.fuse = RateLimitFuse(knobs.stop_at_429s, FUSE_WINDOW_S, clock=clock)
        self.base = f"{knobs.api_url.rstrip('/')}/datasets/v3"

    def call(
        self, method: str, url: str, *, what: str, retry_transient: bool = True, **kwargs
    ) -> requests.Response:
        """One API call: 429s wait (Retry-After, else 2/4/8/16/32 s) and count toward the fuse; 5xx and
        network errors are retried `retries` times when `retry_transient`, else they fail at once."""
        transient = rate_limits = 0
        while True:
            try:
                response = self.session.request(method, url, timeout=self.knobs.timeout_s, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as e:
                if not retry_transient or transient >= self.knobs.retries:
                    raise UserError(
                        f"{what}: {type(e).__name__} after {transient + 1} attempts "
                        f"({secrets.redact(one_line(str(e).encode()), self.token)})"
                    ) from None
                self.sleep(self.knobs.backoff_s * 2**transient)
                transient += 1
                continue
            status = response.status_code
            if status == 429 and rate_limits < len(BACKOFF_429_S):
                self.sleep(
                    self.fuse.record(
                        retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
                        attempt=rate_limits,
                        what=what,
                    )
                )
                rate_limits += 1
                continue
            if status in (401, 403):
                raise AuthRefusedError(
                    f"{what}: Bright Data refused the token (HTTP {status}: "
                    f"{self.text(response)}): check {TOKEN_ENV}"
                )
            if status >= 500 and retry_transient and transient < self.knobs.retries:
                self.sleep(self.knobs.backoff_s * 2**transient)
                transient += 1
                continue
            return response

    def text(self, response: requests.Response) -> str:
        return secrets.redact(one_line(response.content), self.token)

    def trigger(self, body: list[dict]) -> str:
        """Start the collection; its snapshot id. Only a 429 is retried (see the module docstring)."""
        query = {"dataset_id": self.knobs.dataset_id, "include_errors": "true"}
        if self.knobs.discover_by:
            query |= {"type": "discover_new", "discover_by": self.knobs.discover_by}
        payload: list | dict = body
        if self.knobs.limit_per_input:
            payload = {"input": body, "limit_per_input": self.knobs.limit_per_input}
        what = f"trigger {self.knobs.dataset_id}"
        response = self.call(
            "POST", f"{self.base}/trigger", params=query, json=payload, what=what, retry_transient=False
        )
        if response.status_code != 200:
            raise UserError(
                f"{what}: HTTP {response.status_code}: {self.text(response)} (no collection started)"
            )
        try:
            snapshot_id = response.json()["snapshot_id"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{what}: HTTP 200 without a snapshot_id: {self.text(response)}") from None
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise UserError(f"{what}: snapshot_id {snapshot_id!r} is not an id")
        return snapshot_id

    def wait_ready(self, snapshot_id: str, *, refresh: int) -> str:
        """Poll progress until `ready`; SnapshotError on failed, on an unknown id, or past the deadline."""
        deadline = self.clock() + self.knobs.poll_timeout_s
        status = "unknown"
        while True:
            response = self.call(
                "GET", f"{self.base}/progress/{snapshot_id}", what=f"progress of {snapshot_id}"
            )
            if response.status_code == 200:
                try:
                    reply = response.json()
                    status = str(reply.get("status", "unknown"))
                except (ValueError, AttributeError):
                    reply, status = {}, "unreadable"
                if status == "ready":
                    return status
                if status == "failed":
                    raise SnapshotError(
                        f"snapshot {snapshot_id} failed on Bright Data's side: "
                        f"{reply.get('error_message') or 'no error message'}. Its id stays in the ledger; to "
                        f"collect again (billed again) set scrape.{SOURCE}.refresh to {refresh + 1}"
                    )
            elif response.status_code in (400, 404):
                raise self.gone(snapshot_id, response, refresh)
            elif response.status_code != 202:  # 202: not ready yet, as a pending status
                status = f"HTTP {response.status_code}"
            if self.clock() + self.knobs.poll_interval_s > deadline:
                raise SnapshotError(
                    f"snapshot {snapshot_id} is still {status!r} after {self.knobs.poll_timeout_s:g} s "
                    f"(scrape.{SOURCE}.poll_timeout_s): run again to keep waiting for it; no new collection"
                    " is "
                    "triggered"
                )
            print(f"scrape: snapshot {snapshot_id} {status}", file=sys.stderr, flush=True)
            self.sleep(self.knobs.poll_interval_s)

    def gone(self, snapshot_id: str, response: requests.Response, refresh: int) -> SnapshotError:
        text = self.text(response)
        why = (
            "expired (snapshots are kept 30 days)"
            if "expired" in text.lower()
            else f"HTTP {response.status_code}: {text}"
        )
        return SnapshotError(
            f"snapshot {snapshot_id}: {why}. To collect again (billed again) set "
            f"scrape.{SOURCE}.refresh to {refresh + 1}"
        )

    def ready_get(self, url: str, query: dict, *, what: str, refresh: int) -> bytes | None:
        """GET a snapshot resource, waiting through 202 "building"; None for Bright Data's "Snapshot is
        empty" (no records: fetch reports it)."""
        deadline = self.clock() + self.knobs.poll_timeout_s
        while True:
            response = self.call("GET", url, params=query, what=what)
            if response.status_code == 200:
                return response.content
            if response.status_code == 400 and "empty" in self.text(response).lower():
                return None
            if response.status_code in (400, 404):
                raise self.gone(url.rsplit("/snapshot/", 1)[1].split("/")[0], response, refresh)
            if response.status_code != 202 or self.clock() + self.knobs.poll_interval_s > deadline:
                raise SnapshotError(
                    f"{what}: HTTP {response.status_code}: {self.text(response)}; run again to "
                    "retry the download (no new collection is triggered)"
                )
            self.sleep(self.knobs.poll_interval_s)

    def download_part(self, snapshot_id: str, part: int | None, *, refresh: int) -> bytes:
        """One part's JSON array (part None: the whole snapshot)."""
        query: dict = {"format": "json"}
        if part is not None:
            query |= {"batch_size": self.knobs.part_records, "part": part}
        body = self.ready_get(
            f"{self.base}/snapshot/{snapshot_id}",
            query,
            refresh=refresh,
            what=f"download of {snapshot_id}" + (f" part {part}" if part else ""),
        )
        return b"[]" if body is None else body

    def part_count(self, snapshot_id: str, *, refresh: int) -> int:
        body = self.ready_get(
            f"{self.base}/snapshot/{snapshot_id}/parts",
            refresh=refresh,
            query={"format": "json", "batch_size": self.knobs.part_records},
            what=f"parts of {snapshot_id}",
        )
        if body is None:
            return 0
        try:
            parts = json.loads(body)["parts"]
        except (ValueError, KeyError, TypeError):
            parts = None
        if not isinstance(parts, int) or parts < 0:
            raise SnapshotError(
                f"parts of {snapshot_id}: unexpected reply {secrets.redact(one_line(body), self.token)}"
            )
        return parts


def download(api: DatasetAPI, ledger: Ledger, snapshot_id: str, *, refresh: int) -> None:
    """Every part of the snapshot into the ledger, each committed as it arrives (a re-run skips them)."""
    have = ledger.parts(snapshot_id)
    if api.knobs.part_records == 0:
        if 0 not in have:
            ledger.save_part(snapshot_id, 0, api.download_part(snapshot_id, None, refresh=refresh))
        return
    n_parts = api.part_count(snapshot_id, refresh=refresh)
    for part in range(1, n_parts + 1):  # parts are numbered from 1
        if part not in have:
            ledger.save_part(snapshot_id, part, api.download_part(snapshot_id, part, refresh=refresh))
            print(f"scrape: snapshot {snapshot_id} part {part}/{n_parts}", file=sys.stderr, flush=True)


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
