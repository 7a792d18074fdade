"""The Bright Data client both sources share, on its own, over real HTTP to the emulator: retries with
backoff, the 429 policy and its fuse, the stop flag, the token only in the Authorization header.

Each call is one POST /request read with the datasets' reply meaning (brightdata_snapshot.verdict: 429
rate-limited, 401/403 refused, 5xx retry). Time is faked (`FakeTime`): waits are asserted, never waited.
"""

import threading
from types import SimpleNamespace

import pytest

from tests.conftest import FAKE_BRIGHTDATA_TOKEN as TOKEN
from tests.emulators.brightdata import Fault, Page
from tests.webtune.sources.test_brightdata_unlocker import FakeTime
from webtune.sources.brightdata_client import BrightDataClient, one_line
from webtune.sources.brightdata_snapshot import verdict
from webtune.sources.pool import StopRequested
from webtune.sources.ratelimit import RateLimitedError

URL = "https://t.test/a"


def client(token=TOKEN, time_=None, **knobs) -> BrightDataClient:
    time_ = time_ or FakeTime()
    knobs = SimpleNamespace(**({"retries": 2, "backoff_s": 0.5, "stop_at_429s": 24} | knobs))
    return BrightDataClient(token, knobs, sleep=time_.sleep, clock=time_.clock)


def post(brightdata, url=URL):
    """An attempt: one unlocker request; its verdict and the response."""

    def attempt(session):
        response = session.post(f"{brightdata.url}/request", timeout=5, json={
            "zone": "web_unlocker1", "url": url, "format": "raw", "data_format": "markdown"})
        return verdict(response), response

    return attempt


def test_a_5xx_is_retried_after_doubling_backoffs_until_it_succeeds(brightdata):
    brightdata.pages[URL] = Page("# back", faults=[Fault(502), Fault(503)])
    time_ = FakeTime()
    with client(time_=time_) as c:
        result = c.call(post(brightdata), what=URL)
    assert (result.verdict.kind, result.attempts, result.retries) == ("ok", 3, 2)
    assert result.value.text == "# back" and time_.slept == [0.5, 1.0]
    assert [s.authorized for s in brightdata.requests_to("/request")] == [True] * 3


def test_when_retries_run_out_the_last_verdict_comes_back(brightdata):
    brightdata.pages[URL] = Page("# never", faults=[Fault(502)] * 9)
    time_ = FakeTime()
    with client(time_=time_) as c:
        spent = c.call(post(brightdata), what=URL)
        once = c.call(post(brightdata), what=URL, retries=0)  # a request that must not be repeated
    assert (spent.verdict.kind, spent.attempts, spent.value.status_code) == ("retry", 3, 502)
    assert (once.verdict.kind, once.attempts) == ("retry", 1)
    assert time_.slept == [0.5, 1.0] and len(brightdata.requests_to("/request")) == 4


def test_a_429_waits_retry_after_else_the_documented_backoff_and_gives_up_after_five(brightdata):
    brightdata.pages[URL] = Page("# late", faults=[Fault(429, {"Retry-After": "7"})] + [Fault(429)] * 5)
    time_ = FakeTime()
    with client(time_=time_) as c:
        result = c.call(post(brightdata), what=URL)
    assert time_.slept == [7.0, 4.0, 8.0, 16.0, 32.0]  # the server's 7 s, then BACKOFF_429_S[1:]
    assert (result.verdict.kind, result.attempts, result.retries) == ("rate_limited", 6, 0)


def test_the_fuse_counts_429s_across_calls_and_stops_the_run_at_stop_at_429s(brightdata):
    brightdata.pages["https://t.test/a"] = Page("# a", faults=[Fault(429)])
    brightdata.pages["https://t.test/b"] = Page("# b", faults=[Fault(429)] * 2)
    with client(stop_at_429s=3) as c:
        assert c.call(post(brightdata, "https://t.test/a"), what="a").verdict.kind == "ok"
        with pytest.raises(RateLimitedError, match=r"^3 rate-limit replies \(HTTP 429\) within 300 s, the "
                                                   r"last for b: stopping"):
            c.call(post(brightdata, "https://t.test/b"), what="b")
    assert len(brightdata.requests_to("/request")) == 2 + 2  # nothing sent after the third 429


def test_a_shared_rate_turns_the_429_wait_into_a_pause_every_thread_waits_out(brightdata):
    brightdata.pages[URL] = Page("# a", faults=[Fault(429, {"Retry-After": "3"})])
    time_ = FakeTime()
    knobs = SimpleNamespace(retries=0, backoff_s=0.5, stop_at_429s=24)
    with BrightDataClient(TOKEN, knobs, rate=(10, 1.0), sleep=time_.sleep, clock=time_.clock) as c:
        assert c.call(post(brightdata), what=URL).verdict.kind == "ok"
        assert c.limiter.paused_until == 1000.0 + 3.0  # the limiter, not this call, held the wait
    assert time_.slept == [3.0]


def test_a_stopped_client_sends_nothing(brightdata):
    with client() as c:
        c.stop.set()
        with pytest.raises(StopRequested):
            c.call(post(brightdata), what=URL)
    assert brightdata.seen == []


def test_a_refused_token_is_a_final_verdict_for_the_source_to_word(brightdata):
    with client(token="bd-wrong-token-000") as c:
        result = c.call(post(brightdata), what=URL)
    assert (result.verdict.kind, result.attempts, result.value.status_code) == ("auth", 1, 401)


def test_each_thread_gets_its_own_authenticated_session(brightdata):
    with client() as c:
        mine = c.session()
        theirs = []
        worker = threading.Thread(target=lambda: theirs.append(c.session()))
        worker.start()
        worker.join()
        assert c.session() is mine and theirs[0] is not mine
        assert mine.headers["Authorization"] == f"Bearer {TOKEN}"
    assert c.sessions == [mine, theirs[0]]  # what exit closes


def test_text_from_bright_data_is_one_redacted_line():
    c = client()
    assert c.text(f"bad token\n  {TOKEN} \t(echoed)".encode()) == "bad token <redacted> (echoed)"
    assert one_line(b"x" * 250) == "x" * 200 + "..."
