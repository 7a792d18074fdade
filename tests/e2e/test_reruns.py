"""Exact re-runs: DVC re-runs a stage only when something it uses changed, proven with `dvc status`.

On a copy of the built project: a knob of a source that is not selected, a report-only knob, re-scraping
identical content and a change to the base's weights only each leave the stages after them up to date,
and the base depends on nothing scraped.
"""

import pytest

from tests.e2e.dvcproject import changed_stages, copy_project, dvc, ran_stages, set_params, sh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(built, tmp_path_factory):
    return copy_project(built, tmp_path_factory.mktemp("reruns") / "project")


def restore(project):
    sh(project, "git", "checkout", "--", ".")
    dvc(project, "checkout", "-q")
    assert changed_stages(project) == []


def test_the_built_project_is_up_to_date(project):
    assert changed_stages(project) == []
    assert "Data and pipelines are up to date" in dvc(project, "status").stdout


def test_a_knob_of_a_source_that_is_not_selected_changes_nothing(project):
    set_params(project, **{"scrape.http.urls": ["https://example.com/a"], "scrape.files.patterns": ["*.md"]})
    assert changed_stages(project) == []
    restore(project)


def test_re_scraping_identical_content_leaves_every_later_stage_up_to_date(project):
    out = dvc(project, "repro", "--force", "--single-item", "scrape")
    assert ran_stages(out.stdout) == ["scrape"]
    assert changed_stages(project) == []  # the raw table came out byte-identical: clean sees no change
    assert sh(project, "git", "status", "--porcelain").stdout == ""


def test_a_report_only_knob_reruns_its_stage_and_nothing_after_it(project):
    set_params(project, **{"validate.report_samples": 2})
    assert changed_stages(project) == ["validate"]
    out = dvc(project, "repro")
    assert ran_stages(out.stdout) == ["validate"]
    assert changed_stages(project) == []
    restore(project)


def test_a_format_knob_reruns_format_but_not_the_base(project):
    set_params(project, **{"format.report_samples": 3})
    assert changed_stages(project) == ["format"]
    restore(project)


def test_a_clean_knob_changes_clean_and_nothing_upstream_of_the_base(project):
    set_params(project, **{"clean.min_chars": 201})
    try:
        assert changed_stages(project) == ["clean"]
        # base and everything it depends on: no data, so a clean (or scrape) change never reaches it
        assert "up to date" in dvc(project, "status", "--with-deps", "base").stdout
    finally:
        restore(project)


def test_a_longer_warm_up_reruns_train_and_evaluate_but_not_format(project):
    set_params(project, **{"base.tiny.warmup_steps": 31})
    assert changed_stages(project) == ["base"]
    dvc(project, "repro", "--single-item", "base")
    # The tokenizer is its own output and did not change: format stays up to date; the weights did.
    assert changed_stages(project) == ["train", "evaluate"]
    restore(project)


def test_editing_the_warm_up_code_reruns_only_base_when_its_output_is_the_same(project):
    tiny = project / "webtune/models/tiny_warmup.py"
    tiny.write_text(tiny.read_text() + "\n# a comment changes the code's hash, not what it builds\n")
    assert changed_stages(project) == ["base"]
    out = dvc(project, "repro")
    assert ran_stages(out.stdout) == ["base"]
    assert changed_stages(project) == []
    restore(project)
