"""The Web Unlocker source against the Bright Data emulator over real HTTP.

Time is faked for the rate limiter, the 429 fuse and the backoffs (`FakeTime`: sleeping advances it), so
waits are asserted, never waited for; the HTTP itself is real.
"""

import dataclasses
import io
import threading

import pytest
from requests.structures import CaseInsensitiveDict

from tests.conftest import FAKE_BRIGHTDATA_TOKEN as TOKEN
from tests.emulators.brightdata import Fault, Page
from webtune import params as P
from webtune.errors import UserError
from webtune.sources import MARKDOWN, SourceError
from webtune.sources import brightdata_unlocker as U
from webtune.sources.ledger import Ledger
from webtune.sources.ratelimit import RateLimitedError

NOW = "2026-12-01T00:00:00Z"


class FakeTime:
    def __init__(self):
        self.t, self.slept, self.lock = 1000.0, [], threading.Lock()

    def clock(self) -> float:
        with self.lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(round(seconds, 6))
            self.t += seconds


@pytest.fixture
def params(load, brightdata):
    def make(urls, **knobs):
        scrape = load("scrape")
        knobs = {
            "api_url": brightdata.url,
            "retries": 2,
            "backoff_s": 0.5,
            "timeout_s": 5.0,
            "concurrency": 4,
        } | knobs
        return P.replace(
            scrape,
            source=U.SOURCE,
            brightdata_unlocker=dataclasses.replace(scrape.brightdata_unlocker, urls=tuple(urls), **knobs),
        )

    return make


def scrape(params, ledger, time_=None, token=TOKEN):
    time_ = time_ or FakeTime()
    return list(
        U.fetch(
            params,
            sources_dir=None,
            now=lambda: NOW,
            ledger=ledger,
            token=token,
            sleep=time_.sleep,
            clock=time_.clock,
        )
    )


def test_each_url_becomes_one_markdown_row_in_list_order(brightdata, params):
    urls = [f"https://docs.test/p{i}" for i in range(5)]
    for i, url in enumerate(urls):
        brightdata.pages[url] = Page(f"# Page {i}\n\nBody {i}.")
    rows = scrape(params(urls), Ledger.open(":memory:"))
    assert [r["url"] for r in rows] == urls
    assert [r["body"] for r in rows] == [f"# Page {i}\n\nBody {i}." for i in range(5)]
    assert {r["content_type"] for r in rows} == {MARKDOWN} and {r["fetch_error"] for r in rows} == {None}
    sent = brightdata.requests_to("/request")
    assert all(s.authorized for s in sent)
    assert {(s.body["zone"], s.body["format"], s.body["data_format"]) for s in sent} == {
        ("web_unlocker1", "raw", "markdown")
    }


@pytest.mark.parametrize(
    ("status", "headers", "body", "verdict"),
    [
        (200, {"x-brd-status-code": "200"}, b"# ok", ("ok", None)),
        (200, {}, b"# ok", ("ok", None)),
        (200, {"x-brd-status-code": "404"}, b"Not Found", ("failed", "target_404")),
        (
            200,
            {"x-brd-status-code": "200", "x-brd-error": "Blocked by captcha", "x-brd-error-code": "captcha"},
            b"",
            ("failed", "blocked"),
        ),
        (200, {"X-BRD-ERR-CODE": "zone_limit"}, b"x", ("failed", "blocked")),
        (200, {"x-brd-status-code": "200"}, b" \n", ("failed", "empty_body")),
        (200, {"x-brd-status-code": "429"}, b"", ("rate_limited", "rate_limited")),
        (429, {"Retry-After": "3"}, b"slow down", ("rate_limited", "rate_limited")),
        (502, {}, b"bad gateway", ("retry", "unlocker_error")),
        (400, {}, b"zone 'x' not found", ("failed", "request_refused")),
        (401, {}, b"Invalid credentials", ("auth", "auth")),
    ],
)
def test_a_reply_counts_as_fetched_only_under_the_section_6_rule(status, headers, body, verdict):
    got = U.classify(status, CaseInsensitiveDict(headers), body)
    assert (got.kind, got.reason) == verdict


def test_failures_are_rows_with_stable_reasons_and_the_headers_detail(brightdata, params):
    brightdata.pages |= {
        "https://t.test/blocked": Page(
            "", faults=[Fault(200, {"x-brd-error": "Captcha not solved", "x-brd-error-code": "captcha"})]
        ),
        "https://t.test/empty": Page(""),
        "https://t.test/ok": Page("# fine"),
        "https://t.test/gone": Page("Not found", target_status=404),
    }
    rows = scrape(
        params(
            ["https://t.test/blocked", "https://t.test/empty", "https://t.test/ok", "https://t.test/gone"],
            retry_failed=False,
        ),
        Ledger.open(":memory:"),
    )
    assert [r["fetch_error"] for r in rows] == ["blocked", "empty_body", None, "target_404"]
    assert "x-brd-error: Captcha not solved" in rows[0]["fetch_detail"]
    assert "x-brd-error-code: captcha" in rows[0]["fetch_detail"]
    assert rows[3]["fetch_detail"] == "x-brd-status-code: 404 (1 attempt)"


def test_5xx_is_retried_with_backoff_and_a_hang_ends_as_timeout(brightdata, params):
    brightdata.pages["https://t.test/flaky"] = Page("# back", faults=[Fault(502), Fault(503)])
    brightdata.pages["https://t.test/hang"] = Page("# late", faults=[Fault(hang_s=3)] * 3)
    clock = FakeTime()
    rows = scrape(
        params(["https://t.test/flaky", "https://t.test/hang"], timeout_s=0.3, concurrency=1),
        Ledger.open(":memory:"),
        clock,
    )
    assert rows[0]["body"] == "# back" and rows[0]["fetch_error"] is None
    assert rows[1]["fetch_error"] == "timeout" and rows[1]["fetch_detail"].endswith("(3 attempts)")
    assert clock.slept.count(0.5) == 2 and clock.slept.count(1.0) == 2  # backoff_s * 2**k for both URLs
    assert brightdata.fetched_urls().count("https://t.test/flaky") == 3


def test_a_429_honours_retry_after_else_backs_off_2_then_4_seconds(brightdata, params):
    brightdata.pages["https://t.test/a"] = Page("# a", faults=[Fault(429, {"Retry-After": "7"})])
    brightdata.pages["https://t.test/b"] = Page("# b", faults=[Fault(200, {"x-brd-status-code": "429"})] * 2)
    clock = FakeTime()
    rows = scrape(
        params(["https://t.test/a", "https://t.test/b"], concurrency=1), Ledger.open(":memory:"), clock
    )
    assert [r["body"] for r in rows] == ["# a", "# b"]
    assert [s for s in clock.slept if s >= 2] == [
        7.0,
        2.0,
        4.0,
    ]  # the shared pause, slept by the next request


def test_the_fuse_stops_the_run_before_too_many_429s_and_keeps_what_was_fetched(brightdata, params):
    urls = [f"https://t.test/{i}" for i in range(6)]
    for url in urls[:3]:
        brightdata.pages[url] = Page(f"# {url}")
    for url in urls[3:]:
        brightdata.pages[url] = Page("", faults=[Fault(429)] * 5)
    ledger = Ledger.open(":memory:")
    with pytest.raises(RateLimitedError, match=r"^4 rate-limit replies \(HTTP 429\) within 300 s"):
        scrape(params(urls, concurrency=1, stop_at_429s=4), ledger)
    assert [ledger.fetched(U.SOURCE, u, generation=0).body for u in urls[:3]] == [
        f"# {u}".encode() for u in urls[:3]
    ]
    assert len(brightdata.requests_to("/request")) == 3 + 4  # nothing sent after the 4th 429


def test_a_refused_token_stops_the_run_in_one_line_without_the_token(brightdata, params):
    brightdata.pages["https://t.test/a"] = Page("# a")
    with pytest.raises(U.AuthRefusedError) as e:
        scrape(params(["https://t.test/a"]), Ledger.open(":memory:"), token="bd-wrong-token-000")
    message = str(e.value)
    assert "\n" not in message and "bd-wrong-token-000" not in message
    assert "HTTP 401" in message and "BRIGHTDATA_API_TOKEN" in message and "'web_unlocker1'" in message


def test_a_rerun_requests_only_what_the_ledger_lacks(brightdata, params, tmp_path):
    urls = ["https://t.test/ok1", "https://t.test/ok2", "https://t.test/blocked"]
    brightdata.pages |= {u: Page(f"# {u}") for u in urls[:2]}
    brightdata.pages[urls[2]] = Page("# finally", faults=[Fault(200, {"x-brd-error": "blocked"})])
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        first = scrape(params(urls), ledger)
    assert [r["fetch_error"] for r in first] == [None, None, "blocked"]
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        second = scrape(params(urls), ledger)
        assert ledger.counts == {"cached": 2, "fetched": 1, "requested": 1}
    assert sorted(brightdata.fetched_urls()[:3]) == sorted(urls)  # the first run (4 threads: any order)
    assert brightdata.fetched_urls()[3:] == [urls[2]]  # only the failed page was asked for again
    assert [r["body"] for r in second] == [f"# {urls[0]}", f"# {urls[1]}", "# finally"]
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        scrape(params(urls, refresh=1), ledger)  # on purpose: everything again
    assert sorted(brightdata.fetched_urls()[4:]) == sorted(urls)


def test_url_list_problems_fail_before_any_request(brightdata, params):
    with pytest.raises(
        SourceError, match=r"urls\[1\]: 'HTTPS://T.test/a#frag' is the same page as .*urls\[0\]"
    ):
        scrape(params(["https://t.test/a", "HTTPS://T.test/a#frag"]), Ledger.open(":memory:"))
    with pytest.raises(UserError, match=r"urls\[0\]: 'ftp://x' is not an http or https URL"):
        scrape(params(["ftp://x"]), Ledger.open(":memory:"))
    assert brightdata.seen == []


def test_the_token_reaches_only_the_authorization_header(brightdata, params, tmp_path):
    brightdata.pages["https://t.test/a"] = Page("# a page that mentions nothing secret")
    brightdata.pages["https://t.test/b"] = Page("", faults=[Fault(502, body=f"echo: {TOKEN}")] * 3)
    with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
        rows = scrape(params(["https://t.test/a", "https://t.test/b"]), ledger)
    assert rows[1]["fetch_error"] == "unlocker_error" and "<redacted>" in rows[1]["fetch_detail"]
    assert TOKEN not in repr(rows)
    assert TOKEN.encode() not in b"".join(p.read_bytes() for p in tmp_path.iterdir())


def test_progress_without_a_terminal_is_a_line_per_tenth_of_the_pages_requested(brightdata, params,
                                                                               monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())  # as under dvc or CI: lines, no tqdm bar
    urls = [f"https://t.test/p{i}" for i in range(20)]
    brightdata.pages |= {u: Page(f"# {u}") for u in urls[:15]}  # the last five: target_404
    ledger, lines, time_ = Ledger.open(":memory:"), [], FakeTime()
    rows = list(U.fetch(params(urls, concurrency=1), sources_dir=None, now=lambda: NOW, ledger=ledger,
                        token=TOKEN, sleep=time_.sleep, clock=time_.clock, progress=lines.append))
    assert len(rows) == 20
    assert lines == [f"scrape: {n}/20 pages requested, {max(0, n - 15)} failed" for n in range(2, 21, 2)]
