"""What both Bright Data sources do the same way: the token, retries, the 429 policy, one-line errors.

    def fetch(params, *, sources_dir, now, ledger, token, **hooks: Unpack[Hooks]):  # a Bright Data source
        with BrightDataClient(token, params.brightdata_unlocker, **hooks) as client:
            result = client.call(attempt, what=url)  # attempt(session) -> (Verdict, value), retried here
            if result.verdict.kind == "auth": raise AuthRefusedError(...)  # the source names what was refused

`knobs` is the source's params section (both have retries, backoff_s, stop_at_429s); `hooks` are what
the stage or a test may hand a source besides the source contract (fake time, a progress callback),
kept on the client for everything the source does. A source writes `attempt` (one request, and what its
reply comes to: a Verdict) and the client runs the policy around it:

- a `retry` verdict (5xx, timeout, dropped connection) is tried again `retries` times, waiting
  backoff_s * 2**k before retry k;
- a `rate_limited` verdict (429) waits the server's Retry-After, else 2/4/8/16/32 s, at most five times
  per request; every 429 counts toward the fuse, which stops the run (RateLimitedError) at
  `stop_at_429s` within 5 minutes, before Bright Data blocks the IP at 25. With a `rate` (the
  unlocker's threads share one evenly spaced limit) the wait pauses every worker, since Bright Data
  counts the account's requests;
- any other verdict (ok, failed, auth) and a retry or 429 past its budget end the call: the source
  turns it into a row or an error.

Requests go through one authenticated requests.Session per thread (a Session is not thread-safe).
Text that comes back from Bright Data reaches messages only as one redacted line (`text`).
"""

import threading
import time
from collections.abc import Callable
from typing import Generic, NamedTuple, Protocol, TypedDict, TypeVar

import requests

from webtune import io, secrets
from webtune.errors import UserError
from webtune.sources.pool import StopRequested
from webtune.sources.ratelimit import BACKOFF_429_S, RateLimiter, RateLimitFuse

TOKEN_ENV = "BRIGHTDATA_API_TOKEN"
FUSE_WINDOW_S = 300.0  # Bright Data counts 429s per IP over 5 minutes

V = TypeVar("V")


class AuthRefusedError(UserError):
    """Bright Data refused the token or the zone for every request: stop instead of failing each URL."""


class ClientKnobs(Protocol):
    """The knobs every Bright Data params section has."""

    retries: int
    backoff_s: float
    stop_at_429s: int


class Hooks(TypedDict, total=False):
    """What a Bright Data source's `fetch` may be given besides the source contract; each defaults to the
    client's default."""

    sleep: Callable[[float], None]  # time.sleep; tests pass one that advances a fake clock instead
    clock: Callable[[], float]  # time.monotonic: deadlines, the rate limit and the fuse's window
    progress: Callable[[str], None]  # io.stderr; the scrape stage passes its own


class Verdict(NamedTuple):
    """What one reply comes to."""

    kind: str  # ok | failed | retry | rate_limited | auth
    reason: str | None = None
    detail: str = ""
    retry_after_s: float | None = None


class Result(NamedTuple, Generic[V]):
    """How a call ended: the last attempt's verdict and value, and how many tries it took."""

    verdict: Verdict
    value: V
    attempts: int  # requests sent, 429s included
    retries: int  # of those, retries after a `retry` verdict


class BrightDataClient:
    """One account's requests for one run: sessions, the retry loop, the 429 fuse, the stop flag.

    `rate` (limit, period_s): at most `limit` request starts per `period_s`, evenly spaced, across threads.
    """

    def __init__(
        self,
        token: str,
        knobs: ClientKnobs,
        *,
        rate: tuple[int, float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[str], None] = io.stderr,
    ):
        self.token, self.retries, self.backoff_s = token, knobs.retries, knobs.backoff_s
        self.sleep, self.clock, self.progress = sleep, clock, progress
        self.limiter = None if rate is None else RateLimiter(*rate, clock=clock, sleep=sleep)
        self.fuse = RateLimitFuse(knobs.stop_at_429s, FUSE_WINDOW_S, clock=clock)
        self.stop = threading.Event()  # set: no request starts any more (StopRequested)
        self.local = threading.local()
        self.sessions: list[requests.Session] = []
        self.lock = threading.Lock()

    def __enter__(self) -> "BrightDataClient":
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            for session in self.sessions:
                session.close()

    def session(self) -> requests.Session:
        """This thread's session, with the token in its Authorization header (and nowhere else)."""
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.local.session.headers["Authorization"] = f"Bearer {self.token}"
            with self.lock:
                self.sessions.append(self.local.session)
        return self.local.session

    def call(
        self,
        attempt: Callable[[requests.Session], tuple[Verdict, V]],
        *,
        what: str,
        retries: int | None = None,
    ) -> Result[V]:
        """Run `attempt` until its verdict is final (see the module docstring); `what` names the request
        in the fuse's message. `retries` overrides the knob (0: a request that must not be repeated).

        Raises RateLimitedError when the fuse blows, StopRequested once the run has been stopped.
        """
        retries = self.retries if retries is None else retries
        attempts = retried = rate_limits = 0
        while True:
            if self.limiter is not None:
                self.limiter.acquire()
            if self.stop.is_set():  # checked after the wait: the run may have stopped while this one queued
                raise StopRequested(what)
            attempts += 1
            verdict, value = attempt(self.session())
            if verdict.kind == "rate_limited" and rate_limits < len(BACKOFF_429_S):
                delay = self.fuse.record(retry_after_s=verdict.retry_after_s, attempt=rate_limits, what=what)
                rate_limits += 1
                if self.limiter is not None:
                    self.limiter.pause(delay)  # the next acquire (of any thread) waits it out
                else:
                    self.sleep(delay)
                continue
            if verdict.kind == "retry" and retried < retries:
                self.sleep(self.backoff_s * 2**retried)
                retried += 1
                continue
            return Result(verdict, value, attempts, retried)

    def redact(self, text: str) -> str:
        return secrets.redact(text, self.token)

    def text(self, body: bytes) -> str:
        """Bytes from Bright Data (an error body, an exception's text) as one redacted line for a message."""
        return self.redact(one_line(body))


def one_line(body: bytes, limit: int = 200) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text[:limit] + ("..." if len(text) > limit else "")
