"""pairs: questions from headings, answers from sections; product copywriter prompts, exactly."""

import dataclasses
import json

import pytest

from webtune.cleaning import pairs as P
from webtune.schema import provenance

DOC = {"doc_id": "d1", "source": "test", "url": "u", "fetched_at": "t", "content_sha256": "0" * 64,
       "record": None}
LONG = "This section explains the behaviour in enough words to be a useful answer for a reader. " * 2


@pytest.fixture
def params(load):
    # LONG (178 chars) is a full answer at these tests' floor; the default's 200 is a corpus choice
    return dataclasses.replace(load("clean").pairs, min_answer_chars=80)


def test_markdown_and_underlined_headings_split_sections():
    text = (
        "The \"assert\" statement\n***********************\n\nLead text.\n\n"
        "Details\n=======\n\nDetail text.\n\n## Markdown heading\n\nMore.\n\n"
        "```\n# not a heading inside code\n```\n"
    )
    sections = P.split_sections(text)
    assert [(s.heading, s.level) for s in sections] == [
        ('The "assert" statement', 1), ("Details", 2), ("Markdown heading", 2)]
    assert sections[0].body == "Lead text."
    assert sections[2].body == "More.\n\n```\n# not a heading inside code\n```"


def test_a_short_underline_is_not_a_heading():
    assert P.split_sections("A long line of text\n---\nmore") [0].heading == ""


@pytest.mark.parametrize(("text", "limit", "expected"), [
    ("One two three four.\n\nFive six seven eight nine ten.", 30, "One two three four."),
    ("First sentence here. Second sentence is longer than the limit", 40, "First sentence here."),
    ("word " * 20, 22, "word word word word"),
    ("short", 100, "short"),
])
def test_cut_prefers_paragraph_then_sentence_then_word(text, limit, expected):
    assert P.cut(text, limit) == expected
    assert len(P.cut(text, limit)) <= limit


def test_doc_qa_questions_come_from_title_and_headings(params):
    text = f"# json — JSON encoder\n\n{LONG}\n\n## json.dumps\n\n{LONG}\n\n## Tiny\n\nno."
    doc = DOC | {"title": "json", "text": text}
    pairs, skipped = P.doc_qa_pairs(doc, params)
    assert [p["instruction"] for p in pairs] == [
        params.doc_question.format(title="json"),
        params.section_question.format(title="json", heading="json.dumps"),
    ]
    assert pairs[0]["response"] == LONG.strip()
    assert skipped == [("answer_too_short", "Tiny")]
    assert {p["doc_id"] for p in pairs} == {"d1"} and pairs[0]["pair_id"] != pairs[1]["pair_id"]
    assert all(provenance(p) == provenance(doc) for p in pairs)  # every pair traces back to its page


def test_long_headings_are_shortened_to_the_instruction_cap(params):
    p = dataclasses.replace(params, max_instruction_chars=60)
    doc = DOC | {"title": "T", "text": f"intro {LONG}\n\n## {'very long heading ' * 10}\n\n{LONG}"}
    pairs, _ = P.doc_qa_pairs(doc, p)
    assert all(len(x["instruction"]) <= 60 for x in pairs)
    assert "…" in pairs[1]["instruction"]


def test_answers_are_capped(params):
    p = dataclasses.replace(params, max_answer_chars=150)
    doc = DOC | {"title": "T", "text": LONG * 5}
    (pair,), _ = P.doc_qa_pairs(doc, p)
    assert len(pair["response"]) <= 150 and pair["response"].endswith(".")


def product(record):
    return DOC | {"title": "", "text": "", "record": json.dumps(record)}


def test_product_copy_is_flow_a_exactly(params):
    record = {"title": "Kettle", "brand": "Acme", "features": ["1.7 l", "auto off"],
              "description": "  Boils fast.  "}
    (pair,), _ = P.product_copy_pairs(product(record), params)
    assert pair["system"] == "You are an expert copywriter. Generate concise, accurate product descriptions."
    assert pair["instruction"] == (
        "Write a crisp product description.\nTitle: Kettle\nBrand: Acme\nFeatures: 1.7 l, auto off\n"
        "Description:")
    assert pair["response"] == "Boils fast."
    assert pair["task"] == "product_copy"


def test_product_copy_defaults_and_fallbacks(params):
    record = {"bullets": ["one"], "about": ["Line a.", "Line b."] + ["x" * 2000]}
    (pair,), _ = P.product_copy_pairs(product(record), params)
    assert "Title: Unknown product\nBrand: Unknown brand\nFeatures: one\n" in pair["instruction"]
    assert pair["response"].startswith("Line a. Line b. xxx") and len(pair["response"]) == 1200


def test_product_without_description_is_skipped_with_reason(params):
    assert P.product_copy_pairs(product({"title": "x"}), params) == ([], [("no_description", "u")])
    assert P.product_copy_pairs(DOC | {"title": "", "text": "prose"}, params) == ([], [("not_a_record", "u")])


def test_unknown_task_is_named(params):
    with pytest.raises(ValueError, match="clean.pairs.task: unknown task 'poems'"):
        P.build_pairs(DOC | {"title": "", "text": ""}, dataclasses.replace(params, task="poems"))
