"""cleaning.quality: language identification (CLD2) and Gopher's repetition filters, measured first and then
judged against clean.quality's thresholds; each drop has its exact reason and detail."""

import dataclasses
import itertools
import json
import random
import re

import pycld2
import pytest
from datatrove.pipeline.filters.gopher_repetition_filter import (
    find_all_duplicate,
    find_duplicates,
    find_top_duplicate,
    get_n_grams,
)

from tests.webtune.test_params import write_with
from webtune.cleaning import quality as Q
from webtune.cleaning.text import score_doc
from webtune.errors import ParamsError
from webtune.params import load_section
from webtune.sources import MARKDOWN, RECORD, raw_row

GERMAN = (
    "Die Warteschlange nimmt Aufträge in der Reihenfolge an, in der sie eintreffen. Jeder Auftrag wird "
    "von genau einem Arbeiter bearbeitet.\n\nIst die Warteschlange leer, wartet der Arbeiter, bis ein neuer "
    "Auftrag kommt. Die Methode gibt die Anzahl der noch offenen Aufträge zurück.\n\n"
    "Mit dem Parameter timeout legt man fest, wie lange ein Arbeiter höchstens wartet.")
ENGLISH = (
    "The queue accepts jobs in the order they arrive, and each job is handled by exactly one worker. "
    "When the queue is empty, a worker waits until a new job comes in.\n\n"
    "The method returns the number of jobs still open. The timeout parameter sets how long a worker "
    "waits at most before it gives up and raises an exception to its caller.")
CODE_PAGE = '''# Reading configuration files

The loader reads an INI-style file and returns a mapping of sections. Every option is declared once, with its
type and its default, so a missing option falls back to a known value instead of failing later.

```python
parser = ConfigParser()
parser.add_option("host", type=str, default="localhost")
parser.add_option("port", type=int, default=8080)
parser.add_option("timeout", type=float, default=30.0)
parser.add_option("retries", type=int, default=3)
parser.add_option("debug", type=bool, default=False)
config = parser.read("app.ini")
```

## Overriding options

Options given on the command line win over the file: the loader merges both mappings, the command line's
last, and reports an unknown option as an error that names its section and line.

```python
def test_overrides():
    config = parser.read("app.ini", overrides={"port": 9090})
    assert config["port"] == 9090
    config = parser.read("app.ini", overrides={"debug": True})
    assert config["debug"] is True
    config = parser.read("app.ini", overrides={"retries": 5})
    assert config["retries"] == 5
```
'''

API_PAGE = """# codecs — encoders and decoders

Each function below takes a bytes-like object and returns bytes; none of them keeps state between calls.

## codecs.b16decode

    b16decode(s, casefold=False)

Decode the Base16 encoded bytes-like object or ASCII string s. A lowercase alphabet is accepted only when
casefold is true.

## codecs.b16encode

    b16encode(s)

Encode the bytes-like object s using Base16 and return the encoded bytes.

## codecs.b32decode

    b32decode(s, casefold=False, map01=None)

Decode the Base32 encoded bytes-like object or ASCII string s. The digit 0 may stand for the letter O, and
map01 says which letter the digit 1 stands for.

## codecs.b32encode

    b32encode(s)

Encode the bytes-like object s using Base32 and return the encoded bytes.

## codecs.b64decode

    b64decode(s, altchars=None, validate=False)

Decode the Base64 encoded bytes-like object or ASCII string s. Characters outside the alphabet are dropped
unless validate is true, when they raise an error.

## codecs.b64encode

    b64encode(s, altchars=None)

Encode the bytes-like object s using Base64 and return the encoded bytes.
"""

# Table A1 of Rae et al. 2021 (Gopher), where clean.quality's defaults are looser.
PAPER = {
    "max_dup_para_char_frac": 0.2,
    "max_dup_line_char_frac": 0.2,
    "max_top_ngram_char_frac": (0.2, 0.18, 0.16),
    "max_dup_ngram_char_frac": (0.15, 0.14, 0.13, 0.12, 0.11, 0.1),
}


@pytest.fixture
def params(load):
    return load("clean").quality


def doc(url, body, content_type=MARKDOWN, record=None):
    return raw_row(source="test", url=url, raw=body.encode(), content_type=content_type, title="",
                   fetched_at="2026-01-01T00:00:00Z", record=record)


# --- language ------------------------------------------------------------------------------------------


def test_a_german_page_is_the_wrong_language_with_its_score_named(params):
    assert Q.quality_drop(GERMAN, params) == (
        "wrong_language", "detected de (0.99), clean.quality.languages=[en]")


def test_a_page_under_the_language_score_names_the_knob(params):
    mixed = ENGLISH + "\n\n" + GERMAN.split("\n\n")[0]  # 63% English by CLD2's count
    assert Q.quality_drop(mixed, params) == (
        "wrong_language", "detected en (0.63) < clean.quality.min_language_score=0.65")
    assert Q.quality_drop(mixed, dataclasses.replace(params, min_language_score=0.6)) is None


def test_no_languages_turns_language_id_off(params):
    off = dataclasses.replace(params, languages=())
    assert Q.measure(GERMAN, off).language is None
    assert Q.quality_drop(GERMAN, off) is None
    assert Q.quality_drop(GERMAN, dataclasses.replace(params, languages=("en", "de"))) is None


def test_code_is_left_out_of_the_language_sample():
    page = "Intro line.\n```\ndef f(x):\n    return x\n```\n    indented()\nLast line."
    assert Q.prose_sample(page, 1000) == "Intro line.\nLast line."
    assert Q.prose_sample("    only_code()\n    more()", 1000) == "    only_code()\n    more()"  # no prose
    assert Q.prose_sample("a" * 50 + "\n" + "b" * 50, 60) == "a" * 50 + "\n" + "b" * 9


def test_every_char_cld2_rejects_is_blanked_before_it_reads_the_text():
    rejected = [chr(c) for c in (0, 8, 0x0B, 0x0E, 0x1F, 0x7F, 0x85, 0x9F, 0xD800, 0xFDD0, 0xFFFE, 0xFFFF,
                                 0x1FFFE, 0x10FFFF)]
    for ch in rejected:  # each would make CLD2 raise "input contains invalid UTF-8"
        with pytest.raises((pycld2.error, UnicodeEncodeError)):  # UnicodeEncodeError: a surrogate
            pycld2.detect("The queue " + ch + " accepts jobs.")
    assert Q.detect_language(ENGLISH.replace(" ", " " + "".join(rejected) + " ", 3), 1000)[0] == "en"
    for ch in "\t\n\x0c\r\xa0\ufffd":  # kept: CLD2 reads them
        assert not Q._CLD2_REJECTS.search(ch)


def test_a_record_is_judged_by_the_text_built_from_its_fields(load):
    record = {"title": "Wasserkocher aus Edelstahl", "brand": "Acme", "description": GERMAN}
    row = doc("k", json.dumps(record), RECORD, json.dumps(record))
    assert score_doc(row, load("clean"))["drop"] == (
        "wrong_language", "detected de (0.99), clean.quality.languages=[en]")


# --- repetition ----------------------------------------------------------------------------------------


def test_measure_returns_every_fraction_as_datatrove_defines_it(params):
    text = "x y z\nx y z\n\nx y z\nx y z"  # 24 chars, 2 paragraphs, 4 lines, 12 words
    on = dataclasses.replace(params, languages=(),
                             max_dup_ngram_char_frac=(0.25, 0.24, 0.23, 0.22, 0.21, 0.2))
    assert Q.measure(text, on) == Q.Quality(
        language=None, language_score=0.0,
        dup_para_frac=1 / 2, dup_para_char_frac=11 / 24, dup_line_frac=3 / 4, dup_line_char_frac=15 / 24,
        # most common 2/3/4-gram x its count: "x y" x 4, "x y z" x 4, "x y z x" x 3
        top_ngram_char_frac=(12 / 24, 20 / 24, 21 / 24),
        # the n-gram at word 3 repeats the one at word 0 for n = 5..9 ("".join: n chars); none for 10
        dup_ngram_char_frac=(5 / 24, 6 / 24, 7 / 24, 8 / 24, 9 / 24, 0.0))
    # off (every threshold 1, the default), the duplicate n-grams are not measured: they cost the most
    off = dataclasses.replace(on, max_dup_ngram_char_frac=(1,) * 6)
    assert Q.measure(text, off).dup_ngram_char_frac == ()


def test_a_page_repeating_one_line_40_times_is_dropped_for_its_lines(params, load):
    text = "\n".join(["Buy cheap watches online today and save on every order"] * 40)
    assert Q.quality_drop(text, params) == (
        "repeated_lines", "0.975 of lines are duplicates > clean.quality.max_dup_line_frac=0.3")
    assert score_doc(doc("spam", text), load("clean"))["drop"] == Q.quality_drop(text, params)


def test_a_page_repeating_one_3_gram_is_dropped_for_its_top_3_gram(params):
    spam = " ".join(["cheap watch sale"] * 30)  # "cheap watch sale": 16 chars x 30
    text = ENGLISH + "\n\n" + ENGLISH.replace("queue", "pool").replace("worker", "thread") + "\n\n" + spam
    measured = Q.measure(text, params)
    assert len(text) == 1169 and measured.top_ngram_char_frac[1] == 16 * 30 / 1169
    assert measured.top_ngram_char_frac[0] == 11 * 30 / 1169 < params.max_top_ngram_char_frac[0]
    assert Q.judge(measured, params) == ("repeated_ngrams", "0.411 of chars in the top 3-gram > "
                                         "clean.quality.max_top_ngram_char_frac[n=3]=0.28")


def test_repeated_paragraphs_come_first_and_name_their_knob(params):
    text = "\n\n".join([ENGLISH.split("\n\n")[0]] * 3 + [ENGLISH.split("\n\n")[1]])
    assert Q.quality_drop(text, params) == (
        "repeated_paragraphs", "0.500 of paragraphs are duplicates > clean.quality.max_dup_para_frac=0.3")


def test_a_doc_like_page_and_a_code_heavy_page_survive_the_defaults(params):
    for page in (API_PAGE, CODE_PAGE, ENGLISH):
        measured = Q.measure(page, params)
        assert measured.language == "en" and measured.language_score == 0.99
        assert Q.judge(measured, params) is None


def test_an_api_reference_repeats_its_phrasing_past_the_papers_thresholds(params):
    assert Q.quality_drop(API_PAGE, dataclasses.replace(params, **PAPER)) == (
        "repeated_ngrams", "0.143 of chars in duplicate 6-grams > "
                           "clean.quality.max_dup_ngram_char_frac[n=6]=0.14")


def test_thresholds_of_1_skip_the_ngrams(params):
    off = dataclasses.replace(params, max_top_ngram_char_frac=(1, 1, 1), max_dup_ngram_char_frac=(1,) * 6)
    spam = ENGLISH + "\n\n" + " ".join(["cheap watch sale"] * 30)
    measured = Q.measure(spam, off)
    assert (measured.top_ngram_char_frac, measured.dup_ngram_char_frac) == ((), ())
    assert Q.judge(measured, off) is None and Q.quality_drop(spam, params)[0] == "repeated_ngrams"


def test_paragraphs_and_lines_split_as_datatroves_regexes_do():
    for size in range(8):
        for chars in itertools.product("a\n ", repeat=size):
            text = "".join(chars)
            assert Q.split_paragraphs(text) == re.split(r"\n{2,}", text.strip()), repr(text)
            assert Q.split_lines(text) == re.split("\n+", text), repr(text)


def datatrove_ngrams(words):
    return ([find_top_duplicate(grams) if (grams := get_n_grams(words, n)) else 0 for n in Q.TOP_NGRAMS],
            [find_all_duplicate(words, n) for n in Q.DUP_NGRAMS])


def pages(seed: int, count: int):
    """Pages of words from a small vocabulary with planted repeats: runs of 1..12 words copied from
    earlier in the page, as boilerplate phrases and templated sentences are."""
    rng = random.Random(seed)
    vocab = [f"w{i}" * rng.randint(1, 3) for i in range(40)]
    for _ in range(count):
        words = [rng.choice(vocab) for _ in range(rng.randint(0, 300))]
        for _ in range(rng.randint(0, 12)):
            if len(words) > 12:
                start, size = rng.randrange(len(words) - 12), rng.randint(1, 12)
                at = rng.randrange(len(words))
                words[at:at] = words[start : start + size]
        yield words


@pytest.mark.parametrize("words", [[], ["a"], ["a", "b"], ["a"] * 30, ["a", "b"] * 20, [*"xyzxyz"],
                                   [*"babac"], [*"abcde", *"abcde", *"abcde"]])
def test_ngram_chars_are_datatroves_on_edge_cases(words):
    assert Q.ngram_chars(words) == tuple(datatrove_ngrams(words))


def test_ngrams_are_word_tuples_where_datatrove_joins_words_without_a_separator():
    words = ["ab", "c", "d", "e", "f", "a", "bc", "d", "e", "f"]  # "abcdef" twice, split differently
    assert Q.ngram_chars(words)[1][0] == 0 and datatrove_ngrams(words)[1][0] == 6


def test_ngram_chars_and_duplicates_are_datatroves_on_300_pages():
    for words in pages(7, 300):
        assert Q.ngram_chars(words) == tuple(datatrove_ngrams(words)), words
        lines = [" ".join(words[i : i + 3]) for i in range(0, len(words), 3)]
        assert Q._duplicates(lines) == find_duplicates(lines)


def test_the_bound_holds_and_the_filter_decides_as_if_it_had_counted_the_ngrams(params):
    # The filter skips counting n-grams where n x top_ngram_bound keeps every top n-gram under its
    # threshold: the bound must never be below a measured fraction, and the drops must be the same.
    tight = dataclasses.replace(params, max_top_ngram_char_frac=(0.2, 0.15, 0.12))
    skipped = dropped = 0
    rng = random.Random(3)
    varied = ([f"w{rng.randint(0, 3000)}" for _ in range(rng.randint(50, 400))] for _ in range(100))
    for words in itertools.chain(pages(11, 300), varied):
        text = " ".join(words)
        measured = Q.measure(text, tight)
        bound = Q.top_ngram_bound(text.split(), max(1, len(text)))
        assert all(frac <= n * bound for n, frac in zip(Q.TOP_NGRAMS, measured.top_ngram_char_frac,
                                                         strict=True)), text
        assert Q.quality_drop(text, tight) == Q.judge(measured, tight), text
        skipped += not Q.measure(text, tight, skip_bounded=True).top_ngram_char_frac
        dropped += Q.judge(measured, tight) is not None
    assert skipped >= 100 and dropped > 50  # both ways taken


# --- params --------------------------------------------------------------------------------------------


def test_a_language_code_cld2_does_not_know_fails_at_load(tmp_path, repo):
    path = write_with(tmp_path, repo, "clean", "quality", "languages", ["en", "eng"])
    with pytest.raises(ParamsError, match=r"^clean\.quality\.languages: 'eng' is not a language code CLD2 "):
        load_section("clean", path)


def test_each_ngram_threshold_list_has_one_value_per_n(tmp_path, repo):
    path = write_with(tmp_path, repo, "clean", "quality", "max_top_ngram_char_frac", [0.2, 0.18])
    with pytest.raises(ParamsError, match=r"^clean\.quality\.max_top_ngram_char_frac: needs 3 values, got 2"):
        load_section("clean", path)
