"""Waiting for and downloading a Web Scraper API snapshot, and the one call that all its requests go through.

    api = DatasetAPI(client, knobs)
    api.call("POST", f"{api.base}/trigger", what=..., retry_transient=False)  # how the source triggers
    api.wait_ready(snapshot_id, refresh=0)          # polls progress until `ready`
    download(api, ledger, snapshot_id, refresh=0)   # every part into the ledger, each once

The datasets v3 endpoints, as Bright Data documents them:

    POST {api}/datasets/v3/trigger?dataset_id=..&include_errors=true[&type=discover_new&discover_by=..]
    GET  {api}/datasets/v3/progress/{snapshot_id}     starting/running/collecting/digesting -> ready | failed
    GET  {api}/datasets/v3/snapshot/{snapshot_id}/parts, then ?format=json&batch_size=N&part=k for each part

`call` is the shared client's retry loop (brightdata_client) with what a datasets reply means: 429 waits
and counts toward the fuse, 401/403 is a refused token, 5xx and network errors are retried unless the
caller says a repeat could start a second paid job. Polling ends in `ready`, or in a SnapshotError that
names the snapshot id and what to do (keep waiting, or bump `refresh` to pay for a new collection).

Why not brightdata-sdk 2.5.2's dataset client: its trigger raises on a 429 without its Retry-After,
its progress call turns any non-200 (a 429, a 5xx) into "error", it cannot download a snapshot in parts,
and its Amazon helper matches records to inputs by position and returns `dead_page` rows as successes
(REFERENCE-APIS section 6).
"""

import json
from typing import Protocol

import requests

from webtune.errors import UserError
from webtune.sources.brightdata_client import TOKEN_ENV, AuthRefusedError, BrightDataClient, Verdict
from webtune.sources.http import parse_retry_after
from webtune.sources.ledger import Ledger

SOURCE = "brightdata_dataset"  # the source these calls serve: its knobs are scrape.brightdata_dataset


class SnapshotError(UserError):
    """A snapshot failed, expired or did not finish in time: the message names its id and what to do."""


class SnapshotKnobs(Protocol):
    """The scrape.brightdata_dataset knobs these calls read (DatasetParams has them)."""

    api_url: str
    timeout_s: float
    poll_interval_s: float
    poll_timeout_s: float
    part_records: int


class DatasetAPI:
    """The datasets-v3 calls: what each reply means, errors that name the snapshot."""

    def __init__(self, client: BrightDataClient, knobs: SnapshotKnobs):
        self.client, self.knobs = client, knobs
        self.base = f"{knobs.api_url.rstrip('/')}/datasets/v3"

    def call(
        self, method: str, url: str, *, what: str, retry_transient: bool = True, **kwargs
    ) -> requests.Response:
        """One API call through the client: 429s wait and count toward the fuse; 5xx and network errors
        are retried `retries` times when `retry_transient`, else they fail at once."""

        def attempt(session: requests.Session) -> tuple[Verdict, requests.Response | Exception]:
            try:
                response = session.request(method, url, timeout=self.knobs.timeout_s, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as e:
                return Verdict("retry"), e
            return verdict(response), response

        result = self.client.call(attempt, what=what, retries=None if retry_transient else 0)
        if isinstance(result.value, Exception):
            raise UserError(
                f"{what}: {type(result.value).__name__} after {result.retries + 1} attempts "
                f"({self.client.text(str(result.value).encode())})"
            ) from None
        if result.verdict.kind == "auth":
            raise AuthRefusedError(
                f"{what}: Bright Data refused the token (HTTP {result.value.status_code}: "
                f"{self.text(result.value)}): check {TOKEN_ENV}"
            )
        return result.value

    def text(self, response: requests.Response) -> str:
        return self.client.text(response.content)

    def wait_ready(self, snapshot_id: str, *, refresh: int) -> str:
        """Poll progress until `ready`; SnapshotError on failed, on an unknown id, or past the deadline."""
        deadline = self.client.clock() + self.knobs.poll_timeout_s
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
            if self.client.clock() + self.knobs.poll_interval_s > deadline:
                raise SnapshotError(
                    f"snapshot {snapshot_id} is still {status!r} after {self.knobs.poll_timeout_s:g} s "
                    f"(scrape.{SOURCE}.poll_timeout_s): run again to keep waiting for it; no new collection"
                    " is triggered"
                )
            self.client.progress(f"scrape: snapshot {snapshot_id} {status}")
            self.client.sleep(self.knobs.poll_interval_s)

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
        deadline = self.client.clock() + self.knobs.poll_timeout_s
        while True:
            response = self.call("GET", url, params=query, what=what)
            if response.status_code == 200:
                return response.content
            if response.status_code == 400 and "empty" in self.text(response).lower():
                return None
            if response.status_code in (400, 404):
                raise self.gone(url.rsplit("/snapshot/", 1)[1].split("/")[0], response, refresh)
            if response.status_code != 202 or self.client.clock() + self.knobs.poll_interval_s > deadline:
                raise SnapshotError(
                    f"{what}: HTTP {response.status_code}: {self.text(response)}; run again to "
                    "retry the download (no new collection is triggered)"
                )
            self.client.sleep(self.knobs.poll_interval_s)

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
            raise SnapshotError(f"parts of {snapshot_id}: unexpected reply {self.client.text(body)}")
        return parts


def verdict(response: requests.Response) -> Verdict:
    """What a datasets reply means to the client's retry loop; the caller reads everything else."""
    status = response.status_code
    if status == 429:
        return Verdict("rate_limited", retry_after_s=parse_retry_after(response.headers.get("Retry-After")))
    if status in (401, 403):
        return Verdict("auth")
    return Verdict("retry" if status >= 500 else "ok")


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
            api.client.progress(f"scrape: snapshot {snapshot_id} part {part}/{n_parts}")
