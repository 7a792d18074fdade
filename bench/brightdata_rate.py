"""Web Unlocker pacing: 1,000 URLs against the local Bright Data emulator, 100 ms per reply, 20 requests/s.

    python bench/brightdata_rate.py --urls 1000 --latency-s 0.1 --rate 20 \
        --out bench/results/brightdata_rate.json     # make bench-brightdata
    python bench/brightdata_rate.py --smoke      # 30 URLs at 20/s, 10 ms per reply: under 2 s

Runs the real source (webtune.sources.brightdata_unlocker.fetch, real HTTP, real clock) with
`requests_per_period` = rate, `period_s` = 1 and params.yaml's concurrency, and reports
- wall time against the ideal: N requests evenly spaced at `rate`/s take (N - 1) / rate s to start, plus
  one reply's latency: 1,000 at 20/s -> 49.95 + 0.1 = 50.05 s (the limiter spaces 2% wider: 51.05 s);
- the most requests that started in any 1-second window, counted twice: at the client (when the
  limiter let each go: what the limiter promises) and at the emulator (when each arrived: what a provider
  counting per window would see, network jitter included).
"""

import argparse
import bisect
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record import Recorder  # noqa: E402

from tests.emulators.brightdata import BrightDataEmulator, Page  # noqa: E402
from webtune import params as P  # noqa: E402
from webtune.params import load_section  # noqa: E402
from webtune.sources import brightdata_unlocker as unlocker  # noqa: E402
from webtune.sources import ratelimit  # noqa: E402
from webtune.sources.ledger import Ledger  # noqa: E402

TOKEN = "bench-token-not-a-secret"


def max_in_window(times: list[float], window_s: float) -> int:
    """The most of `times` inside any half-open window [t, t + window_s)."""
    times = sorted(times)
    return max(bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", type=int, default=1000)
    parser.add_argument("--latency-s", type=float, default=0.1)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--smoke", action="store_true", help="30 URLs at 20/s, 10 ms per reply")
    args = parser.parse_args()
    recorder = Recorder("brightdata_rate", smoke=args.smoke)
    if args.smoke:
        args.urls, args.rate, args.latency_s = 30, 20, 0.01

    starts: list[float] = []  # client side: when the limiter let each request go
    acquire = ratelimit.RateLimiter.acquire

    def recorded(self):
        t = acquire(self)
        starts.append(t)
        return t

    ratelimit.RateLimiter.acquire = recorded
    scrape = load_section("scrape", args.params)
    urls = [f"https://docs.example.test/page/{i:05d}" for i in range(args.urls)]
    with BrightDataEmulator(token=TOKEN, latency_s=args.latency_s) as emulator:
        emulator.pages |= {u: Page(f"# Page {i}\n\nSome text of page {i}.") for i, u in enumerate(urls)}
        knobs = dataclasses.replace(scrape.brightdata_unlocker, urls=tuple(urls), api_url=emulator.url,
                                    requests_per_period=args.rate, period_s=1.0)
        params = P.replace(scrape, source=unlocker.SOURCE, brightdata_unlocker=knobs)
        t0 = time.perf_counter()
        rows = list(unlocker.fetch(params, sources_dir=None, now=lambda: "", ledger=Ledger.open(":memory:"),
                                   token=TOKEN))
        wall = time.perf_counter() - t0
        arrivals = [s.t for s in emulator.requests_to("/request")]
    ideal = (args.urls - 1) / args.rate + args.latency_s
    result = {
        "urls": args.urls, "latency_s": args.latency_s, "rate_per_s": args.rate,
        "concurrency": knobs.concurrency,
        "fetched": sum(r["fetch_error"] is None for r in rows),
        "requests_seen_by_emulator": len(arrivals),
        "wall_s": round(wall, 2), "ideal_s": round(ideal, 2), "wall_vs_ideal": round(wall / ideal, 4),
        "max_starts_in_any_1s_client": max_in_window(starts, 1.0),
        "max_arrivals_in_any_1s_emulator": max_in_window(arrivals, 1.0),
    }
    recorder.save(args.out, result)


if __name__ == "__main__":
    main()
