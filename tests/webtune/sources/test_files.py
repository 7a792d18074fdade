"""sources.files: a saved Bright Data snapshot's error objects are failed rows, its products records.

The stage-level tests of this source (every file type, malformed input, too_large) are in
tests/stages/test_scrape.py; these call the source's own functions.
"""

import dataclasses
import json
from pathlib import Path

import pytest

from webtune.schema import doc_id
from webtune.sources import RECORD
from webtune.sources.files import fetch, object_row

TIME = "2026-01-01T00:00:00Z"
DEAD = {"error": "Page does not exist", "error_code": "dead_page",
        "input": {"url": "https://www.amazon.com/dp/B000000000"}}
KETTLE = {"title": "Kettle", "brand": "Acme", "url": "https://www.amazon.com/dp/B0KETTLE00",
          "input": {"url": "https://www.amazon.com/dp/B0KETTLE00"}, "description": "Boils."}


def test_an_error_object_in_a_snapshot_is_a_failed_row_and_the_product_beside_it_a_record(load, tmp_path):
    (tmp_path / "snapshot.json").write_text(json.dumps([KETTLE, DEAD]))
    params = dataclasses.replace(load("scrape"), source="files")
    kettle, dead = fetch(params, sources_dir=tmp_path, now=lambda: TIME)
    assert (kettle["url"], kettle["fetch_error"], kettle["content_type"]) == (KETTLE["url"], None, RECORD)
    assert json.loads(kettle["record"]) == KETTLE
    url = DEAD["input"]["url"]
    assert (dead["url"], dead["fetch_error"]) == (url, "dead_page")
    assert dead["fetch_detail"] == "Page does not exist"
    assert (dead["doc_id"], dead["body"], dead["record"]) == (doc_id("files", url), "", None)


@pytest.mark.parametrize(("obj", "reason", "detail"), [
    ({"error": "Page does not exist"}, "record_error", "Page does not exist"),
    ({"error": "Blocked", "error_code": "Request blocked"}, "record_error", "Blocked"),
    ({"error": "Blocked", "error_code": 403}, "record_error", "Blocked"),
    ({"error": "Page does not exist", "error_code": "DEAD_PAGE"}, "dead_page", "Page does not exist"),
    ({"error_code": "crawl_failed"}, "crawl_failed", "crawl_failed"),
    ({"error": {"message": "timeout"}}, "record_error", '{"message": "timeout"}'),
])
def test_an_error_objects_reason_is_its_snake_case_code_else_record_error(obj, reason, detail):
    row = object_row(obj, path=Path("snap.json"), index=3, fetched_at=TIME)
    assert (row["fetch_error"], row["fetch_detail"], row["url"]) == (reason, detail, "snap.json#3")


@pytest.mark.parametrize(("obj", "url"), [
    ({**DEAD, "url": "https://www.amazon.com/dp/B0REDIRECT"}, "https://www.amazon.com/dp/B0REDIRECT"),
    (DEAD, "https://www.amazon.com/dp/B000000000"),
    ({**DEAD, "input": {"keyword": "kettle"}}, "snap.json#3"),
    ({**DEAD, "input": "kettle"}, "snap.json#3"),
])
def test_an_error_objects_url_is_its_own_else_its_inputs_else_its_place_in_the_file(obj, url):
    assert object_row(obj, path=Path("snap.json"), index=3, fetched_at=TIME)["url"] == url


def test_an_empty_error_field_leaves_a_product_a_record():
    obj = {**KETTLE, "error": None, "error_code": ""}
    row = object_row(obj, path=Path("snap.json"), index=0, fetched_at=TIME)
    assert (row["fetch_error"], row["content_type"], row["url"]) == (None, RECORD, KETTLE["url"])
