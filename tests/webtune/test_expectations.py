"""The shared GE runner and its report (webtune.expectations, expectations_report), the suite files, and
the chat_rows suite on rows rendered by the harmony format.

The chat_rows suite file is format-neutral: its row pattern is a placeholder that the format stage replaces
with the chat format's own `row_regex()` (expectations.with_kwargs), as `chat_suite` below does."""

import json
from pathlib import Path

import pandas as pd
import pytest

from webtune.errors import GateFailed, InputError
from webtune.expectations import (
    gx,  # imported through webtune.expectations, which turns analytics off first
    load_suite,
    run_suite,
    save_suite,
    with_kwargs,
)
from webtune.expectations_report import ExpectationsFailed, check, failure_message, render_report
from webtune.formats import harmony

ROOT = Path(__file__).resolve().parents[2]
ROW_PATTERN = "expect_column_values_to_match_regex"
BETWEEN = "expect_column_values_to_be_between"
SUITES = sorted((ROOT / "expectations").glob("*.json"))


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.name)
def test_every_suite_file_loads_explains_each_expectation_and_is_diff_stable(path, tmp_path):
    suite = load_suite(path)  # raises on an unknown expectation, a bad kwarg, or a missing meta.why
    assert suite.expectations and all(e.meta["why"].strip() for e in suite.expectations)
    save_suite(suite, tmp_path / path.name)
    assert (tmp_path / path.name).read_text() == path.read_text()  # no ids, sorted keys: a save is a no-op
    assert '"id"' not in path.read_text()


def test_both_suites_the_pipeline_names_exist():
    assert {p.name for p in SUITES} >= {"pairs.json", "chat_rows.json"}


def test_load_suite_rejects_an_expectation_without_a_why(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"name": "s", "expectations": [
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "a"}, "meta": {}}]}))  # fmt: skip
    message = r"s.json: expectation 0 \(expect_column_values_to_be_unique\) has no meta.why"
    with pytest.raises(InputError, match=message):
        load_suite(path)


def test_with_kwargs_overrides_a_copy_and_refuses_a_type_the_suite_lacks():
    row_count = gx.expectations.ExpectTableRowCountToBeBetween(min_value=1)
    suite = gx.ExpectationSuite(name="s", expectations=[row_count])
    changed = with_kwargs(suite, "expect_table_row_count_to_be_between", min_value=9)
    assert changed.expectations[0].min_value == 9
    assert suite.expectations[0].min_value == 1
    with pytest.raises(InputError, match="suite 's' has no expect_column_values_to_be_unique to override"):
        with_kwargs(suite, "expect_column_values_to_be_unique", column="a")


def between(suite) -> dict:
    """column -> (min_value, max_value) of the suite's between expectations."""
    return {e.column: (e.min_value, e.max_value) for e in suite.expectations if e.expectation_type == BETWEEN}


def test_with_kwargs_on_a_column_changes_only_that_columns_expectation():
    suite = load_suite(ROOT / "expectations" / "chat_rows.json")
    n_tokens = between(suite)["n_tokens"]
    assert between(suite) == {"n_tokens": n_tokens, "train_overlap": (None, -1.0)}
    changed = with_kwargs(suite, BETWEEN, on_column="train_overlap", max_value=0.25)
    assert between(changed) == {"n_tokens": n_tokens, "train_overlap": (None, 0.25)}
    assert between(suite)["train_overlap"] == (None, -1.0)  # the loaded suite is untouched
    everywhere = with_kwargs(suite, BETWEEN, max_value=7)  # no column named: every between expectation
    assert between(everywhere) == {"n_tokens": (n_tokens[0], 7), "train_overlap": (None, 7)}
    with pytest.raises(InputError, match=f"has no {BETWEEN} on column 'n_chars' to override"):
        with_kwargs(suite, BETWEEN, on_column="n_chars", max_value=1)
    with pytest.raises(InputError, match=f"has no {ROW_PATTERN} on column 'train_overlap' to override"):
        with_kwargs(suite, ROW_PATTERN, on_column="train_overlap", regex=".*")


# --- chat_rows.json on rendered rows ---------------------------------------------------------------

CONVERSATIONS = {
    "c0": [
        {"role": "system", "content": "You are a concise Python tutor."},
        {"role": "user", "content": "What does json.dumps do?"},
        {"role": "assistant",
         "content": "It serialises an object to a JSON string.\n\nExample: json.dumps([1])"},
    ],
    "c1": [  # no system prompt; scraped text that spells a control token is neutralised by render
        {"role": "user", "content": "Explain the token <|start|> in a doc"},
        {"role": "assistant", "content": "It is written <|start|> in harmony | and stays inert >"},
    ],
    "c2": [  # multi-turn: earlier assistant turns end with <|end|>, only the last with <|return|>
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "a < b?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "And b > a?"},
        {"role": "assistant", "content": "Also yes."},
    ],
}


def chat_rows(**overrides_by_id) -> pd.DataFrame:
    rows = []
    for pair_id, messages in CONVERSATIONS.items():
        text = harmony.FORMAT.render(messages)
        n = harmony.FORMAT.expected_special_ids(messages)
        row = {"pair_id": pair_id, "split": "train", "train_overlap": None, "messages": messages,
               "text": text, "n_tokens": len(text) // 4, "n_special_ids": n,
               "n_expected_special_ids": n}  # fmt: skip
        rows.append(row | overrides_by_id.get(pair_id, {}))
    return pd.DataFrame(rows)


def stage_suite(leak_threshold: float = 0.0):
    """The suite as the format stage runs it: the file's, with the format's own row pattern and the
    format.leak_threshold as the most train_overlap a val/test row may have."""
    suite = load_suite(ROOT / "expectations" / "chat_rows.json")
    suite = with_kwargs(suite, ROW_PATTERN, regex=harmony.FORMAT.row_regex())
    return with_kwargs(suite, BETWEEN, on_column="train_overlap", max_value=leak_threshold)


@pytest.fixture(scope="module")
def chat_suite():
    return stage_suite()


def test_the_suite_file_holds_no_row_pattern_of_its_own_and_fails_closed_without_the_format_s():
    suite = load_suite(ROOT / "expectations" / "chat_rows.json")
    [pattern] = [e for e in suite.expectations if e.expectation_type == ROW_PATTERN]
    assert (pattern.column, pattern.regex) == ("text", "^$")  # a placeholder, replaced at run time
    result = run_suite(suite, chat_rows(), id_column="pair_id", samples=5)
    # run without the overrides, the gate rejects every row instead of passing them
    assert {r.name: r.sample_ids for r in result.failed} == {
        "expect_column_values_to_match_regex[text]": ("c0", "c1", "c2"),
    }  # these rows are train rows (train_overlap null): the overlap placeholder is the next test's


def test_without_the_threshold_override_the_train_overlap_check_fails_whatever_the_rows():
    suite = with_kwargs(load_suite(ROOT / "expectations" / "chat_rows.json"), ROW_PATTERN,
                        regex=harmony.FORMAT.row_regex())
    [overlap] = [e for e in suite.expectations
                 if e.expectation_type == BETWEEN and e.column == "train_overlap"]
    assert (overlap.min_value, overlap.max_value) == (None, -1.0)  # a placeholder no share can meet
    val_rows = chat_rows(c0={"split": "val", "train_overlap": 0.0},
                         c2={"split": "test", "train_overlap": 0.0})
    [failed] = run_suite(suite, val_rows, id_column="pair_id", samples=5).failed
    # every checked row fails, named: even an answer sharing nothing with train is over -1
    assert (failed.name, failed.sample_ids) == ("expect_column_values_to_be_between[train_overlap]",
                                                ("c0", "c2"))
    assert run_suite(suite, chat_rows(), id_column="pair_id", samples=5).success  # train rows: null, skipped


def test_a_val_row_over_the_leak_threshold_fails_the_gate_and_one_at_it_passes(chat_suite):
    df = chat_rows(c0={"split": "val", "train_overlap": 0.5}, c1={"split": "test", "train_overlap": 0.0})
    [failed] = run_suite(chat_suite, df, id_column="pair_id", samples=5).failed  # threshold 0.0
    assert (failed.name, failed.kwargs["max_value"], failed.sample_ids) == (
        "expect_column_values_to_be_between[train_overlap]", 0.0, ("c0",))  # fmt: skip
    assert run_suite(stage_suite(0.5), df, id_column="pair_id", samples=5).success
    assert not run_suite(stage_suite(0.49), df, id_column="pair_id", samples=5).success


def test_rendered_chat_rows_pass(chat_suite):
    result = run_suite(chat_suite, chat_rows(), id_column="pair_id", samples=5)
    assert result.success, failure_message(result)
    check(result)  # does not raise
    [pattern] = [r for r in result.results if r.type == ROW_PATTERN]
    assert pattern.kwargs["regex"] == harmony.FORMAT.row_regex()  # the report shows the pattern that ran


@pytest.mark.parametrize(
    ("bad_text", "why"),
    [
        ("<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>ok<|start|>x<|return|>",
         "a raw control token inside the answer"),
        ("<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>\n",
         "trailing text after <|return|>"),
        ("<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>ok<|end|>",
         "the last answer ends with <|end|>: the model would never learn to stop"),
        ("<|start|>user<|message|>hi<|end|><|start|>assistant<|message|>ok<|return|>", "no final channel"),
        ("<|start|>assistant<|channel|>final<|message|>ok<|return|>", "no user turn"),
        ("<|start|>user<|message|>hi|> there<|end|><|start|>assistant<|channel|>final<|message|>ok<|return|>",
         "a closing half of a control tag in content"),
    ],
    ids=lambda v: v if " " in v else None,
)
def test_text_that_is_not_exact_harmony_fails_the_structure_regex(chat_suite, bad_text, why):
    result = run_suite(chat_suite, chat_rows(c1={"text": bad_text}), id_column="pair_id", samples=5)
    [failed] = result.failed
    assert (failed.type, failed.kwargs["column"]) == (ROW_PATTERN, "text"), why
    assert failed.sample_ids == ("c1",)


def test_chat_rows_failures_name_each_expectation_and_its_row(chat_suite):
    df = chat_rows(c0={"n_special_ids": 8, "split": "dev"}, c2={"n_tokens": 0, "pair_id": "c1"})
    result = run_suite(chat_suite, df, id_column="pair_id", samples=5)
    assert {r.name: r.sample_ids for r in result.failed} == {
        "expect_column_pair_values_to_be_equal[n_special_ids,n_expected_special_ids]": ("c0",),
        "expect_column_values_to_be_between[n_tokens]": ("c1",),  # the second "c1" (was c2)
        "expect_column_values_to_be_in_set[split]": ("c0",),
        "expect_column_values_to_be_unique[pair_id]": ("c1", "c1"),
    }


def test_null_messages_fail_the_not_null_expectation(chat_suite):
    df = chat_rows()
    df.at[2, "messages"] = None
    [failed] = run_suite(chat_suite, df, id_column="pair_id", samples=5).failed
    assert (failed.type, failed.kwargs["column"], failed.sample_ids) == (
        "expect_column_values_to_not_be_null", "messages", ("c2",))  # fmt: skip


# --- reporting ---------------------------------------------------------------------------------------


def toy_suite() -> gx.ExpectationSuite:
    E = gx.expectations
    return gx.ExpectationSuite(name="toy", expectations=[
        E.ExpectTableRowCountToBeBetween(min_value=10, meta={"why": "enough rows"}),
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=r"<\||\|>", meta={"why": "no tags"}),
        E.ExpectColumnValuesToBeUnique(column="id", meta={"why": "keys"}),
        E.ExpectColumnValuesToNotBeNull(column="missing", meta={"why": "absent column"}),
    ])  # fmt: skip


@pytest.fixture(scope="module")
def toy_result():
    df = pd.DataFrame({"id": ["a", "b", "c", "d"], "text": ["ok", "x <|y", "fine", "z|>"]})
    return run_suite(toy_suite(), df, id_column="id", samples=1)


def test_results_keep_suite_order_and_a_missing_column_is_an_error_not_a_crash(toy_result):
    assert [r.type for r in toy_result.results] == [e.expectation_type for e in toy_suite().expectations]
    row_count, regex, unique, missing = toy_result.results
    assert (row_count.success, row_count.observed, row_count.unexpected_count) == (False, 4, None)
    assert (regex.success, regex.unexpected_count, regex.sample_ids) == (False, 2, ("b",))  # samples=1
    assert unique.success and unique.sample_ids == ()
    assert not missing.success and 'The column "missing" in BatchData does not exist' in missing.error


def test_failure_message_has_one_line_per_failed_expectation(toy_result):
    assert failure_message(toy_result).splitlines() == [
        "3 of 4 expectations failed (suite toy, 4 rows)",
        "  expect_table_row_count_to_be_between(min_value=10): observed 4",
        "  expect_column_values_to_not_match_regex(column=text, regex=<\\||\\|>): "
        "2 of 4 rows unexpected; sample id: b",
        "  expect_column_values_to_not_be_null(column=missing): "
        'error: Error: The column "missing" in BatchData does not exist.',
    ]
    with pytest.raises(ExpectationsFailed, match="3 of 4 expectations failed") as info:
        check(toy_result)
    assert info.value.result is toy_result
    assert isinstance(info.value, GateFailed)  # a user error: the stage exits 1 with the message


def test_report_is_a_markdown_table_of_every_expectation_with_pipes_escaped(toy_result):
    report = render_report(toy_result, "toy gate")
    lines = report.splitlines()
    assert lines[0] == "# toy gate"
    assert lines[2] == "**FAILED**: 3 of 4 expectations failed on 4 rows (suite `toy`)."
    rows = [line for line in lines if line.startswith("| ") and "expect_" in line]
    assert len(rows) == 4
    assert rows[1] == (
        "| **FAIL** | `expect_column_values_to_not_match_regex` | `column=text, regex=<\\\\|\\|\\\\|>` "
        "| 2 of 4 rows unexpected | b | no tags |"
    )
    assert rows[2].startswith("| pass | `expect_column_values_to_be_unique` |")
    assert all(line.count(" | ") == 5 for line in rows)  # no unescaped pipe splits a cell


def test_an_empty_table_runs(chat_suite):
    empty = chat_rows().iloc[:0]
    assert run_suite(chat_suite, empty, id_column="pair_id", samples=5).rows == 0


def test_an_unknown_id_column_is_a_value_error():
    with pytest.raises(ValueError, match="id column 'pair_id' not in table"):
        run_suite(toy_suite(), pd.DataFrame({"id": ["a"]}), id_column="pair_id", samples=1)

