"""The Web Scraper API source against the Bright Data emulator over real HTTP: trigger, progress, parts.

Sleeps are faked (`FakeTime`): polling and backoff are asserted by what was slept, never waited for.
"""

import dataclasses
import json

import pytest

from tests.conftest import FAKE_BRIGHTDATA_TOKEN as TOKEN
from tests.emulators.brightdata import Fault
from tests.webtune.sources.test_brightdata_unlocker import FakeTime
from webtune import params as P
from webtune.sources import RECORD, EmptySourceError, SourceError
from webtune.sources import brightdata_dataset as D
from webtune.sources.ledger import Ledger
from webtune.sources.ratelimit import RateLimitedError

URLS = [f"https://www.amazon.com/dp/B00000000{i}" for i in range(3)]


def product(i: int) -> dict:
    return {
        "url": URLS[i],
        "title": f"Earbuds {i}",
        "brand": "Acme",
        "description": f"Fine earbuds, model {i}.",
        "final_price": 19.99 + i,
        "asin": f"B00000000{i}",
    }


@pytest.fixture
def params(load, brightdata):
    def make(inputs=URLS, **knobs):
        scrape = load("scrape")
        knobs = {
            "api_url": brightdata.url,
            "poll_interval_s": 10.0,
            "poll_timeout_s": 100.0,
            "retries": 2,
            "backoff_s": 1.0,
        } | knobs
        return P.replace(
            scrape,
            source=D.SOURCE,
            brightdata_dataset=dataclasses.replace(scrape.brightdata_dataset, inputs=tuple(inputs), **knobs),
        )

    return make


def scrape(params, ledger, time_=None):
    time_ = time_ or FakeTime()
    return list(
        D.fetch(
            params,
            sources_dir=None,
            now=lambda: "2026-12-01T00:00:00Z",
            ledger=ledger,
            token=TOKEN,
            sleep=time_.sleep,
            clock=time_.clock,
        )
    )


def test_a_collection_is_triggered_once_polled_and_downloaded_as_records(brightdata, params):
    brightdata.products |= {URLS[i]: product(i) for i in range(3)}
    brightdata.collection_script = {
        "progress": ["starting", "collecting", "digesting", "ready"],
        "building_replies": 1,
    }
    clock, ledger = FakeTime(), Ledger.open(":memory:")
    rows = scrape(params(), ledger, clock)
    assert [json.loads(r["record"]) for r in rows] == [product(i) for i in range(3)]
    assert {r["content_type"] for r in rows} == {RECORD} and [r["url"] for r in rows] == URLS
    (trigger,) = brightdata.requests_to("/datasets/v3/trigger")
    assert trigger.query == {"dataset_id": "gd_l7q7dkf244hwjntr0", "include_errors": "true"}
    assert trigger.body == [{"url": u} for u in URLS]
    assert len(brightdata.requests_to("/datasets/v3/progress/")) == 4
    assert clock.slept == [10.0] * 4  # three pending polls and one 202 "building" download
    assert ledger.counts == {"triggered": 1, "records": 3}


def test_error_records_become_failed_rows_with_their_code(brightdata, params):
    brightdata.products[URLS[0]] = product(0)  # URLS[1] and [2] are dead pages on the emulator
    rows = scrape(params(), Ledger.open(":memory:"))
    assert [(r["url"], r["fetch_error"], r["fetch_detail"]) for r in rows] == [
        (URLS[0], None, None),
        (URLS[1], "dead_page", "Page does not exist"),
        (URLS[2], "dead_page", "Page does not exist"),
    ]


def test_keyword_discovery_sends_discover_new(brightdata, params):
    brightdata.products["wireless earbuds"] = [product(0), product(1)]
    rows = scrape(
        params(["wireless earbuds"], discover_by="keyword", limit_per_input=2), Ledger.open(":memory:")
    )
    assert len(rows) == 2
    (trigger,) = brightdata.requests_to("/datasets/v3/trigger")
    assert trigger.query["type"] == "discover_new" and trigger.query["discover_by"] == "keyword"
    assert trigger.body == {"input": [{"keyword": "wireless earbuds"}], "limit_per_input": 2}


def test_a_rerun_after_a_deadline_polls_the_stored_id_and_never_triggers_again(brightdata, params, tmp_path):
    brightdata.products |= {URLS[i]: product(i) for i in range(3)}
    brightdata.collection_script = {"progress": ["running"] * 20 + ["ready"]}
    with (
        Ledger.open(tmp_path / "l.sqlite") as ledger,
        pytest.raises(
            D.SnapshotError,
            match=r"^snapshot s_emulated0001 is still 'running' after 100 s .*no new collection",
        ),
    ):
        scrape(params(), ledger)
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        rows = scrape(params(poll_timeout_s=1000.0), ledger)
        assert ledger.counts == {"resumed": 1, "records": 3}
    assert len(rows) == 3 and len(brightdata.requests_to("/datasets/v3/trigger")) == 1
    with Ledger.open(tmp_path / "l.sqlite") as ledger:  # done: not even a poll
        scrape(params(), ledger)
    assert len(brightdata.requests_to("/datasets/v3/progress/")) == 21


def test_parts_are_downloaded_one_by_one_and_kept(brightdata, params, tmp_path):
    brightdata.products["kw"] = [
        dict(product(0), url=f"https://www.amazon.com/dp/P{i:05d}") for i in range(2500)
    ]
    rows = scrape(
        params(["kw"], discover_by="keyword", part_records=1000), Ledger.open(tmp_path / "l.sqlite")
    )
    assert len(rows) == 2500 and rows[-1]["url"] == "https://www.amazon.com/dp/P02499"
    parts = [s.query.get("part") for s in brightdata.requests_to("/datasets/v3/snapshot/")]
    assert parts == [None, "1", "2", "3"]  # the part count, then each part once


@pytest.mark.parametrize(
    ("script", "match"),
    [
        (
            {"progress": ["running", "failed"]},
            r"^snapshot s_emulated0001 failed on Bright Data's side: Collection "
            r"failed: emulated\. .*refresh to 1",
        ),
        (
            {"expired": True},
            r"^snapshot s_emulated0001: expired \(snapshots are kept 30 days\)\. .*refresh to 1",
        ),
    ],
)
def test_failed_and_expired_snapshots_fail_in_one_line_keeping_the_id(
    brightdata, params, script, match, tmp_path
):
    brightdata.products[URLS[0]] = product(0)
    brightdata.collection_script = script
    with Ledger.open(tmp_path / "l.sqlite") as ledger, pytest.raises(D.SnapshotError, match=match):
        scrape(params(URLS[:1]), ledger)
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        assert (
            ledger.snapshot(
                D.SOURCE, D.collection_key(params(URLS[:1]).brightdata_dataset), generation=0
            ).snapshot_id
            == "s_emulated0001"
        )


def test_an_empty_snapshot_fails_the_stage(brightdata, params):
    brightdata.products["nothing"] = []
    with pytest.raises(
        EmptySourceError, match=r"^snapshot s_emulated0001 of gd_l7q7dkf244hwjntr0 has no records"
    ):
        scrape(params(["nothing"], discover_by="keyword"), Ledger.open(":memory:"))


def test_a_429_on_trigger_is_retried_but_a_5xx_is_not(brightdata, params, tmp_path):
    brightdata.products[URLS[0]] = product(0)
    brightdata.trigger_faults = [Fault(429, {"Retry-After": "5"}), Fault(502, body="upstream")]
    clock = FakeTime()
    with pytest.raises(
        D.UserError, match=r"^trigger gd_l7q7dkf244hwjntr0: HTTP 502: upstream \(no collection"
    ):
        scrape(params(URLS[:1]), Ledger.open(":memory:"), clock)
    assert clock.slept == [5.0] and len(brightdata.requests_to("/datasets/v3/trigger")) == 2


def test_too_many_429s_stop_polling(brightdata, params):
    brightdata.products[URLS[0]] = product(0)
    brightdata.trigger_faults = [Fault(429)] * 5
    with pytest.raises(RateLimitedError, match=r"^3 rate-limit replies"):
        scrape(params(URLS[:1], stop_at_429s=3), Ledger.open(":memory:"))


def test_bad_inputs_fail_before_any_request(brightdata, params):
    with pytest.raises(SourceError, match=r"inputs\[1\]: 'https://a.test/x' repeats inputs\[0\]"):
        scrape(params(["https://a.test/x", "https://a.test/x"]), Ledger.open(":memory:"))
    with pytest.raises(SourceError, match=r"inputs\[0\]: 'earbuds' is not an http or https URL"):
        scrape(params(["earbuds"]), Ledger.open(":memory:"))
    assert brightdata.seen == []


def test_progress_reports_the_trigger_each_pending_poll_each_part_and_a_resume(brightdata, params,
                                                                              tmp_path):
    brightdata.products["kw"] = [dict(product(0), url=f"https://a.test/dp/P{i:05d}") for i in range(1500)]
    brightdata.collection_script = {"progress": ["starting", "running", "ready"]}
    knobs = params(["kw"], discover_by="keyword", part_records=1000)
    lines, time_ = [], FakeTime()
    for _ in range(2):
        with Ledger.open(tmp_path / "l.sqlite") as ledger:
            rows = list(D.fetch(knobs, sources_dir=None, now=lambda: "2026-12-01T00:00:00Z", ledger=ledger,
                                token=TOKEN, sleep=time_.sleep, clock=time_.clock, progress=lines.append))
            assert len(rows) == 1500
    assert lines == [
        "scrape: triggered gd_l7q7dkf244hwjntr0 for 1 inputs: snapshot s_emulated0001 (kept in the ledger; "
        "a re-run resumes it)",
        "scrape: snapshot s_emulated0001 starting",
        "scrape: snapshot s_emulated0001 running",
        "scrape: snapshot s_emulated0001 part 1/2",
        "scrape: snapshot s_emulated0001 part 2/2",
        "scrape: resuming snapshot s_emulated0001 (downloaded, triggered 2026-12-01T00:00:00Z)",
    ]
