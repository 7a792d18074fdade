"""scrape: the pydoc default, local files, bad input, a re-scrape that keeps unchanged docs' times, and
the paid Bright Data sources through main: the token check, a killed scrape resumed, no token anywhere."""

import dataclasses
import functools
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from stages import scrape as S
from tests.conftest import FAKE_BRIGHTDATA_TOKEN
from tests.emulators.brightdata import Fault, Page
from webtune import params as P
from webtune.schema import RAW_DOCS
from webtune.sources import EmptySourceError, SourceError
from webtune.sources.pydoc import build_time

FIXED_TIME = "2026-01-01T00:00:00Z"
OLD_TIME = "2020-01-01T00:00:00Z"


def files_params(load, **overrides):
    p = load("scrape")
    return P.replace(p, source="files", **overrides)


def run(params, sources_dir, now=FIXED_TIME, first_seen=None):
    return S.scrape(params, sources_dir=sources_dir, now=lambda: now, first_seen=first_seen)


def test_pydoc_default_reads_topics_and_module_docs(load, tmp_path):
    table = run(load("scrape"), tmp_path)
    urls = table.column("url").to_pylist()
    assert "pydoc://topics/assert" in urls and "pydoc://module/json" in urls
    assert table.schema == RAW_DOCS
    body = table.column("body")[urls.index("pydoc://module/json")].as_py()
    assert body.startswith("# json — ") and "\n## json.dumps\n" in body
    assert set(table.column("fetch_error").to_pylist()) == {None}
    assert len(set(table.column("doc_id").to_pylist())) == table.num_rows


def test_pydoc_fetched_at_is_the_interpreters_build_time_not_the_clock(load, tmp_path):
    first = run(load("scrape"), tmp_path, now="2026-01-01T00:00:00Z")
    second = run(load("scrape"), tmp_path, now="2030-06-30T12:34:56Z")
    assert set(first.column("fetched_at").to_pylist()) == {build_time()}
    assert first.equals(second)  # whatever `now` says, two scrapes are identical


def test_files_source_reads_every_supported_type(load, tmp_path):
    (tmp_path / "page.html").write_text("<html><body><h1>Hi</h1><p>text</p></body></html>")
    (tmp_path / "notes.md").write_text("# Notes\n\nSome markdown.")
    (tmp_path / "plain.txt").write_text("plain text")
    products = [{"title": "Kettle", "brand": "Acme", "features": ["1.7 l"], "description": "Boils."},
                {"title": "Mug", "url": "https://shop.example/mug", "description": "Holds tea."}]
    (tmp_path / "snapshot.json").write_text(json.dumps(products))
    (tmp_path / "docs.jsonl").write_text(
        '{"url": "https://a.example/x", "markdown": "# X\\n\\nbody"}\n\n{"title": "rec"}\n')
    (tmp_path / "rows.csv").write_text("title,description\nLamp,Bright\n")
    table = run(files_params(load), tmp_path)
    by_url = {r["url"]: r for r in table.to_pylist()}
    assert by_url[str(tmp_path / "page.html")]["content_type"] == "text/html"
    assert by_url[str(tmp_path / "notes.md")]["content_type"] == "text/markdown"
    assert by_url[str(tmp_path / "plain.txt")]["content_type"] == "text/plain"
    kettle = by_url[f"{tmp_path / 'snapshot.json'}#0"]
    assert kettle["content_type"] == "application/x-record+json"
    assert json.loads(kettle["record"])["brand"] == "Acme" and kettle["title"] == "Kettle"
    assert by_url["https://shop.example/mug"]["title"] == "Mug"
    assert by_url["https://a.example/x"]["content_type"] == "text/markdown"
    assert by_url["https://a.example/x"]["body"] == "# X\n\nbody"
    lamp = json.loads(by_url[f"{tmp_path / 'rows.csv'}#0"]["record"])
    assert lamp == {"title": "Lamp", "description": "Bright"}
    assert table.num_rows == 8
    assert set(table.column("fetched_at").to_pylist()) == {FIXED_TIME}


def test_the_sources_readme_is_not_a_document(load, tmp_path):
    (tmp_path / "README.md").write_text("# how to use this folder")
    (tmp_path / "a.md").write_text("# A")
    assert run(files_params(load), tmp_path).column("url").to_pylist() == [str(tmp_path / "a.md")]


def test_an_empty_source_is_an_error_naming_it(load, tmp_path):
    with pytest.raises(EmptySourceError, match="source 'files' produced no documents"):
        run(files_params(load), tmp_path)


def test_malformed_json_names_file_and_line(load, tmp_path):
    (tmp_path / "bad.json").write_text('[\n {"title": "ok"},\n {"title": oops}\n]')
    with pytest.raises(SourceError, match=r"bad\.json:3: malformed JSON"):
        run(files_params(load), tmp_path)


def test_malformed_jsonl_names_file_and_line(load, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n')
    with pytest.raises(SourceError, match=r"bad\.jsonl:3: malformed JSON line"):
        run(files_params(load), tmp_path)


def test_malformed_csv_names_file_and_line(load, tmp_path):
    (tmp_path / "bad.csv").write_text('title,description\nLamp,Bright\nMug,"unclosed,x\n')
    with pytest.raises(SourceError, match=r"bad\.csv:\d+: malformed CSV"):
        run(files_params(load), tmp_path)
    (tmp_path / "bad.csv").write_text("title,description\nLamp,Bright\nMug,Holds,tea\n")
    with pytest.raises(SourceError, match=r"bad\.csv:3: 3 fields, header has 2"):
        run(files_params(load), tmp_path)


def test_non_utf8_and_nul_bytes_are_decoded_by_policy_and_counted(load, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1") + b"\x00\x00 ok")
    row = run(files_params(load), tmp_path).to_pylist()[0]
    assert row["body"] == "caf\ufffd cr\ufffdme ok"
    assert row["n_bad_chars"] == 4  # two invalid bytes replaced, two NULs removed


def test_a_huge_file_is_recorded_as_too_large_without_reading_it(load, tmp_path, monkeypatch):
    big = tmp_path / "big.html"
    with big.open("wb") as f:  # 50 MB sparse file: cheap to make, fatal to read into a page
        f.truncate(50 * 1024 * 1024)

    read_bytes = Path.read_bytes

    def guarded(self):
        assert self != big, "the too-large file was read"
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", guarded)
    (tmp_path / "small.txt").write_text("fine")
    rows = {r["url"]: r for r in run(files_params(load), tmp_path).to_pylist()}
    assert rows[str(big)]["fetch_error"] == "too_large"
    assert rows[str(big)]["n_bytes"] == 50 * 1024 * 1024
    assert rows[str(big)]["fetch_detail"] == "52,428,800 bytes > scrape.max_doc_bytes=5,000,000"
    assert rows[str(tmp_path / "small.txt")]["fetch_error"] is None


def test_unknown_source_is_named(load, tmp_path):
    known = r"\(known: pydoc, files, http, brightdata_unlocker, brightdata_dataset\)"
    with pytest.raises(SourceError, match=rf"scrape\.source: unknown source 'ftp' {known}"):
        run(dataclasses.replace(load("scrape"), source="ftp"), tmp_path)


def test_pydoc_pages_are_the_same_on_every_run(load, tmp_path):
    first, second = run(load("scrape"), tmp_path), run(load("scrape"), tmp_path)
    assert first.column("content_sha256").to_pylist() == second.column("content_sha256").to_pylist()
    modules = [r["body"] for r in first.to_pylist() if r["url"].startswith("pydoc://module/")]
    assert not any(" at 0x" in body for body in modules), "a runtime memory address leaked into a page"


def test_a_pydoc_page_does_not_show_what_the_process_imported(load, tmp_path):
    """logging's page prints `shutdown(handlerList=[...])` live: rendered in the stage's own process it
    listed every handler an imported HTTP client had made, so loading the Bright Data sources' params
    changed the embedded default's scrape. Pages are rendered in a fresh interpreter."""

    class MarkerHandler(logging.NullHandler):
        pass

    logging.getLogger("webtune-test-marker").addHandler(MarkerHandler())
    params = load("scrape")
    pydoc = dataclasses.replace(params.pydoc, topics=False, modules=("logging",))
    table = run(P.replace(params, pydoc=pydoc), tmp_path)
    page = table.column("body")[0].as_py()
    assert "\n## logging.shutdown\n" in page and "handlerList=[" in page
    assert "MarkerHandler" not in page


def test_a_module_pydoc_cannot_import_is_one_line_naming_it(load, tmp_path):
    params = load("scrape")
    pydoc = dataclasses.replace(params.pydoc, topics=False, modules=("json", "no_such_module_xyz"))
    with pytest.raises(EmptySourceError, match="^pydoc source: module 'no_such_module_xyz' cannot be "
                                               "imported: No module named 'no_such_module_xyz'$"):
        list(run(P.replace(params, pydoc=pydoc), tmp_path).to_pylist())


# --- re-scraping: a doc whose bytes did not change keeps when it was first seen -----------------------


def test_first_seen_keeps_the_time_of_unchanged_bytes_and_dates_changed_ones_now(load, tmp_path):
    (tmp_path / "same.md").write_text("# Same\n\nunchanged")
    (tmp_path / "edited.md").write_text("# Edited\n\nfirst version")
    before = {r["url"]: r for r in run(files_params(load), tmp_path, now=OLD_TIME).to_pylist()}
    first_seen = {(r["doc_id"], r["content_sha256"]): OLD_TIME for r in before.values()}
    (tmp_path / "edited.md").write_text("# Edited\n\nsecond version")
    after = {r["url"]: r for r in run(files_params(load), tmp_path, first_seen=first_seen).to_pylist()}
    same, edited = str(tmp_path / "same.md"), str(tmp_path / "edited.md")
    assert after[same]["fetched_at"] == OLD_TIME
    assert after[edited]["fetched_at"] == FIXED_TIME
    assert after[edited]["doc_id"] == before[edited]["doc_id"]
    assert after[edited]["content_sha256"] != before[edited]["content_sha256"]


def write_params(repo, tmp_path, **scrape) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["scrape"] |= scrape
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def main_args(tmp_path, params_file, src) -> list[str]:
    return ["--sources-dir", str(src), "--out", str(tmp_path / "raw"), "--ledger",
            str(tmp_path / "ledger.sqlite"), "--metrics", str(tmp_path / "m.json"),
            "--params", str(params_file)]


def with_clock(monkeypatch, now: str) -> None:
    """main's scrape, with a clock that says `now` (the stage passes none: the default is the wall clock)."""
    monkeypatch.setattr(S, "scrape", functools.partial(S.scrape, now=lambda: now))


def test_main_writes_table_and_metrics_and_fails_cleanly_on_empty(repo, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    args = main_args(tmp_path, write_params(repo, tmp_path, source="files"), src)
    with pytest.raises(SystemExit) as exit_info:
        S.main(args)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ("scrape: source 'files' produced no documents: check scrape.files in "
                                       "params.yaml\n")
    assert not (tmp_path / "raw").exists()
    assert list(tmp_path.glob(".raw*")) == [], "a temporary folder was left behind"
    (src / "a.md").write_text("# A\n\ntext")
    S.main(args)
    assert pq.read_table(tmp_path / "raw").num_rows == 1
    assert json.loads((tmp_path / "m.json").read_text())["docs_ok"] == 1


def test_previous_fetch_times_reads_what_main_wrote_and_skips_failures(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("# A\n\ntext")
    (src / "big.txt").write_text("x" * 200)  # over max_doc_bytes: a failed row, which has no content time
    with_clock(monkeypatch, OLD_TIME)
    S.main(main_args(tmp_path, write_params(repo, tmp_path, source="files", max_doc_bytes=100), src))
    rows = pq.read_table(tmp_path / "raw").to_pylist()
    assert sorted(r["fetch_error"] or "" for r in rows) == ["", "too_large"]
    ok = next(r for r in rows if r["fetch_error"] is None)
    times = S.previous_fetch_times(tmp_path / "raw")
    assert times == {(ok["doc_id"], ok["content_sha256"]): OLD_TIME}
    assert S.previous_fetch_times(tmp_path / "missing") == {}


def test_main_twice_on_unchanged_files_writes_a_byte_identical_table(repo, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("# A\n\ntext")
    (src / "b.txt").write_text("plain text")
    args = main_args(tmp_path, write_params(repo, tmp_path, source="files"), src)
    with_clock(monkeypatch, OLD_TIME)
    S.main(args)
    first = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    with_clock(monkeypatch, FIXED_TIME)
    S.main(args)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == first
    assert set(pq.read_table(tmp_path / "raw").column("fetched_at").to_pylist()) == {OLD_TIME}


def unlocker_params(repo, tmp_path, brightdata, urls, **knobs) -> Path:
    section = yaml.safe_load((repo / "params.yaml").read_text())["scrape"]["brightdata_unlocker"]
    section |= {"urls": urls, "api_url": brightdata.url, "backoff_s": 0.01, "period_s": 0.5} | knobs  # 200/s
    return write_params(repo, tmp_path, source="brightdata_unlocker", brightdata_unlocker=section)


def test_the_stage_hands_its_progress_to_a_paid_source(load, brightdata, monkeypatch):
    from webtune.sources.ledger import Ledger

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # no terminal (dvc, CI): progress lines, no bar
    brightdata.pages["https://t.test/a"] = Page("# A")
    p = load("scrape")
    knobs = dataclasses.replace(p.brightdata_unlocker, urls=("https://t.test/a",), api_url=brightdata.url)
    lines = []
    S.scrape(P.replace(p, source="brightdata_unlocker", brightdata_unlocker=knobs),
             sources_dir=Path("."), ledger=Ledger.open(":memory:"), token=FAKE_BRIGHTDATA_TOKEN,
             progress=lines.append)
    assert lines == ["scrape: 1/1 pages requested, 0 failed"]


def test_a_paid_source_without_a_token_fails_in_one_line_before_any_request(repo, tmp_path, brightdata,
                                                                             capsys, monkeypatch):
    monkeypatch.delenv("BRIGHTDATA_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    args = main_args(tmp_path, unlocker_params(repo, tmp_path, brightdata, ["https://t.test/a"]), tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        S.main(args)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "scrape: scrape.source brightdata_unlocker needs BRIGHTDATA_API_TOKEN: export it, or put "
        "BRIGHTDATA_API_TOKEN=... in .env (git-ignored); it is never read from params.yaml\n")
    assert brightdata.seen == [] and not (tmp_path / "ledger.sqlite").exists()


def test_the_token_is_read_from_dot_env_and_appears_in_no_output(repo, tmp_path, brightdata, capsys,
                                                                  monkeypatch):
    monkeypatch.delenv("BRIGHTDATA_API_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"BRIGHTDATA_API_TOKEN={FAKE_BRIGHTDATA_TOKEN}\n")
    brightdata.pages["https://t.test/a"] = Page("# A page\n\nWith text.")
    echo = Fault(500, body=f"token {FAKE_BRIGHTDATA_TOKEN}")  # a server error that echoes the token
    brightdata.pages["https://t.test/b"] = Page("", faults=[echo] * 9)
    params = unlocker_params(repo, tmp_path, brightdata, ["https://t.test/a", "https://t.test/b"])
    S.main(main_args(tmp_path, params, tmp_path))
    rows = pq.read_table(tmp_path / "raw").to_pylist()
    assert [r["fetch_error"] for r in rows] == [None, "unlocker_error"]
    this_run = json.loads((tmp_path / "m.json").read_text())["this_run"]
    assert this_run == {"cached": 0, "fetched": 1, "requested": 2}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".env"]
    assert {p.name for p in written} >= {"00000.parquet", "m.json", "ledger.sqlite", "params.yaml"}
    for path in written:
        assert FAKE_BRIGHTDATA_TOKEN.encode() not in path.read_bytes(), path
    assert FAKE_BRIGHTDATA_TOKEN not in capsys.readouterr().err


def run_scrape(tmp_path, args) -> subprocess.Popen:
    env = os.environ | {"BRIGHTDATA_API_TOKEN": FAKE_BRIGHTDATA_TOKEN, "NO_PROXY": "127.0.0.1"}
    return subprocess.Popen([sys.executable, "-m", "stages.scrape", *args], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)


def test_a_killed_scrape_resumes_and_ends_with_the_table_of_an_uninterrupted_run(repo, tmp_path, brightdata):
    from webtune.sources.ledger import Ledger, normalise_url

    urls = [f"https://t.test/page-{i:02d}" for i in range(40)]
    brightdata.pages |= {u: Page(f"# Page {u[-2:]}\n\nBody.") for u in urls}
    brightdata.pages[urls[7]].faults = [Fault(200, {"x-brd-error": "blocked"})] * 9  # stays a failure
    brightdata.latency_s = 0.05
    params = unlocker_params(repo, tmp_path, brightdata, urls, concurrency=2, retry_failed=False)
    (tmp_path / "whole").mkdir()
    whole = run_scrape(tmp_path / "whole", main_args(tmp_path / "whole", params, tmp_path))
    assert whole.wait(60) == 0, whole.stderr.read()
    before = len(brightdata.seen)

    (tmp_path / "killed").mkdir()
    args = main_args(tmp_path / "killed", params, tmp_path)
    killed = run_scrape(tmp_path / "killed", args)
    while len(brightdata.seen) < before + 15:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    with Ledger.open(tmp_path / "killed" / "ledger.sqlite") as ledger:
        done = {u for u in urls if ledger.fetched("brightdata_unlocker", normalise_url(u), generation=0)}
    assert 10 <= len(done) < 40 and not (tmp_path / "killed" / "raw").exists()
    at_kill = len(brightdata.seen)
    resumed = run_scrape(tmp_path / "killed", args)
    assert resumed.wait(60) == 0, resumed.stderr.read()

    again = [s.body["url"] for s in brightdata.seen[at_kill:]]
    assert not done & set(again), "a page the ledger held was requested again"
    assert sorted(set(again) | done) == sorted(urls)
    table, reference = (pq.read_table(tmp_path / d / "raw").drop(["fetched_at"])
                        for d in ("killed", "whole"))
    assert table.equals(reference)
    metrics = json.loads((tmp_path / "killed" / "m.json").read_text())
    assert metrics["this_run"]["cached"] == len(done) and metrics["failed"] == {"blocked": 1}


def test_a_scrape_killed_while_polling_resumes_the_stored_snapshot_and_never_triggers_again(repo, tmp_path,
                                                                                           brightdata):
    section = yaml.safe_load((repo / "params.yaml").read_text())["scrape"]["brightdata_dataset"]
    urls = [f"https://www.amazon.com/dp/B0KILL{i:04d}" for i in range(3)]
    section |= {"inputs": urls, "api_url": brightdata.url, "poll_interval_s": 0.05}
    params = write_params(repo, tmp_path, source="brightdata_dataset", brightdata_dataset=section)
    brightdata.products |= {u: {"url": u, "title": f"P {u[-4:]}", "description": "A product."} for u in urls}
    brightdata.collection_script = {"progress": ["running"] * 40 + ["ready"]}  # about 2 s of polling
    args = main_args(tmp_path, params, tmp_path)
    killed = run_scrape(tmp_path, args)
    while len(brightdata.requests_to("/datasets/v3/progress/")) < 5:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait(10)
    resumed = run_scrape(tmp_path, args)
    assert resumed.wait(60) == 0, resumed.stderr.read()
    assert len(brightdata.requests_to("/datasets/v3/trigger")) == 1
    assert pq.read_table(tmp_path / "raw").column("url").to_pylist() == urls
    assert json.loads((tmp_path / "m.json").read_text())["this_run"] == {"records": 3, "resumed": 1}
