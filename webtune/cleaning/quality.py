"""Web-quality filters from FineWeb's recipe, run on a doc's clean text after the length bounds:

  language     CLD2 (pycld2: its model is compiled into the wheel, so it loads offline) on a sample of
               the doc's prose; the doc is kept when its top language is one of clean.quality.languages
               and covers at least clean.quality.min_language_score of the sample
  repetition   Gopher's repetition filters (Rae et al. 2021, table A1): duplicate lines and paragraphs
               (as shares of items and of chars), the chars of the most common 2/3/4-gram and the chars
               of the duplicate 5..10-grams, with datatrove's definitions (GopherRepetitionFilter)

Score first, filter second: `measure` returns every measured value (a test asserts them), `judge` compares
them with the thresholds and returns the first drop as (reason, detail), or None. Drop reasons:
wrong_language, repeated_paragraphs, repeated_lines, repeated_ngrams.
"""

import dataclasses
import re
from collections import Counter
from itertools import compress
from operator import itemgetter

import numpy as np
import pycld2

from webtune.params import at_least, between, knob

TOP_NGRAMS = (2, 3, 4)  # the most common n-gram's chars, one threshold each (Gopher: 0.20, 0.18, 0.16)
DUP_NGRAMS = (5, 6, 7, 8, 9, 10)  # duplicate n-grams' chars (Gopher: 0.15, 0.14, ..., 0.10)
CLD2_CODES = frozenset(code for _, code in pycld2.LANGUAGES)


def _cld2_codes(codes) -> str | None:
    unknown = [c for c in codes if c not in CLD2_CODES]
    return f"{unknown[0]!r} is not a language code CLD2 reports (en, de, zh-Hant, ...)" if unknown else None


def _fractions(n: int):
    def check(values) -> str | None:
        if len(values) != n:
            return f"needs {n} values, got {len(values)}"
        bad = [v for v in values if not 0 <= v <= 1]
        return f"must be between 0 and 1, got {bad[0]!r}" if bad else None
    return check


@dataclasses.dataclass(frozen=True)
class QualityParams:
    languages: tuple[str, ...] = knob(_cld2_codes)
    min_language_score: float = knob(between(0, 1))
    language_sample_chars: int = knob(at_least(1))
    max_dup_para_frac: float = knob(between(0, 1))
    max_dup_para_char_frac: float = knob(between(0, 1))
    max_dup_line_frac: float = knob(between(0, 1))
    max_dup_line_char_frac: float = knob(between(0, 1))
    max_top_ngram_char_frac: tuple[float, ...] = knob(_fractions(len(TOP_NGRAMS)))
    max_dup_ngram_char_frac: tuple[float, ...] = knob(_fractions(len(DUP_NGRAMS)))


@dataclasses.dataclass(frozen=True)
class Quality:
    language: str | None  # CLD2's top language of the prose sample ("un": none found); None: not measured
    language_score: float  # the share of the sample in that language
    dup_para_frac: float
    dup_para_char_frac: float
    dup_line_frac: float
    dup_line_char_frac: float
    top_ngram_char_frac: tuple[float, ...]  # for n in TOP_NGRAMS; () not measured (every threshold is 1)
    dup_ngram_char_frac: tuple[float, ...]  # for n in DUP_NGRAMS; likewise


# ---------------------------------------------------------------- language

# Code points CLD2 rejects as "invalid UTF-8" (found by trying every one): C0 controls but tab, newline,
# form feed and carriage return, DEL and C1, surrogates and the noncharacters. They carry no language.
_CLD2_REJECTS = re.compile(
    "[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17)) + "]")


def prose_sample(text: str, limit: int) -> str:
    """The first `limit` chars of the lines outside code: fenced blocks and indented lines (markdown and
    reST code, pydoc's grammar rules) are skipped, since code reads as no language or a wrong one (CLD2
    calls a bare `def f(x):` block Wolof). A text with no such line is sampled as it is."""
    kept, size, in_fence = [], 0, False
    for line in text.split("\n"):
        if line.startswith(("```", "~~~")):
            in_fence = not in_fence
        elif line and not in_fence and line[0] not in " \t":
            kept.append(line)
            size += len(line) + 1
            if size >= limit:
                break
    return "\n".join(kept)[:limit] if kept else text[:limit]


def detect_language(text: str, sample_chars: int) -> tuple[str, float]:
    """(language code, share of the sample in it) by CLD2 on the first `sample_chars` chars of prose.

    A sample, not the whole doc: CLD2 reads ~12 MB/s (~40 us for 500 chars, under a tenth of the rest of
    score_doc's time on a 6 kB page), and a doc's language shows in its first paragraphs.
    """
    sample = _CLD2_REJECTS.sub(" ", prose_sample(text, sample_chars))
    _, _, ((_, code, percent, _), *_) = pycld2.detect(sample)
    return code, percent / 100


# ---------------------------------------------------------------- repetition


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(items seen before, their chars): datatrove's find_duplicates, as set arithmetic."""
    unique = set(items)
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


def _dup_scan(pos: list[int], grams: list[tuple]) -> int:
    """datatrove's find_all_duplicate (scan the n-grams left to right; one seen before counts its chars
    and the scan jumps past it) visiting only `pos`, the positions of the repeated n-grams in order: an
    n-gram that occurs once is never seen before, so skipping it changes nothing."""
    chars, resume, seen = 0, 0, set()
    for i, gram in zip(pos, grams, strict=True):
        if i < resume:  # inside a jump
            continue
        if gram in seen:
            chars += sum(map(len, gram))  # "".join(gram): no spaces
            resume = i + len(gram)
        else:
            seen.add(gram)
    return chars


def ngram_chars(words: list[str], dup: bool = True) -> tuple[list[int], list[int]]:
    """(chars of the most common n-gram x its count for n in TOP_NGRAMS, chars of the duplicate n-grams
    for n in DUP_NGRAMS), exactly as datatrove's find_top_duplicate(get_n_grams(...)) and
    find_all_duplicate compute them (tests check it), ~10x faster.

    datatrove builds every n-gram of every n as a string: 2-3 ms for a page of 3.5 kB of clean text, ~5x
    the rest of score_doc; this takes ~0.2 ms, still most of the filters' cost.
    Here an n-gram can repeat only where the (n-1)-grams at its position and the next both repeat, so
    past the bigrams only the few positions where they repeat are looked at. N-grams are word tuples
    (datatrove joins the duplicate scan's words without a separator, so ('ab', 'c') is ('a', 'bc') there).
    """
    top, dups = [], []
    grams = list(zip(words, words[1:], strict=False))
    counts = Counter(grams)
    repeated = {g for g, k in counts.items() if k > 1}
    pos = list(compress(range(len(grams)), map(repeated.__contains__, grams)))
    for n in range(2, max(DUP_NGRAMS if dup else TOP_NGRAMS) + 1):  # no duplicate scan: stop at 4-grams
        if n > 2:
            follows = set(pos)
            pos = [i for i in pos if i + 1 in follows and i + n <= len(words)]
            grams = [tuple(words[i : i + n]) for i in pos]
            counts = Counter(grams)
            keep = [counts[g] > 1 for g in grams]
            pos, grams = list(compress(pos, keep)), list(compress(grams, keep))
        if n in TOP_NGRAMS:
            if len(words) < n:
                top.append(0)
            elif pos:  # max() keeps the first of equal counts, as Counter.most_common does
                gram, k = max(counts.items(), key=itemgetter(1))
                top.append(k * (sum(map(len, gram)) + n - 1))
            else:  # every n-gram occurs once: the first one is the most common
                top.append(sum(map(len, words[:n])) + n - 1)
        if n in DUP_NGRAMS:
            dups.append(_dup_scan(pos, grams) if pos else 0)
    return top, dups


_PARAGRAPH_BREAK = re.compile(r"\n{2,}")


def split_paragraphs(text: str) -> list[str]:
    """datatrove's paragraphs, re.split(r"\\n{2,}", text.strip()), without the regex (~8x slower) when no
    blank-line run is longer than one line, as in every clean text (normalise folds them)."""
    text = text.strip()
    return _PARAGRAPH_BREAK.split(text) if "\n\n\n" in text else text.split("\n\n")


def split_lines(text: str) -> list[str]:
    """datatrove's lines, re.split("\\n+", text), without the regex: the empty strings str.split leaves
    between consecutive newlines go, those at either end stay."""
    parts = text.split("\n")
    if len(parts) < 3 or "\n\n" not in text:
        return parts
    return [parts[0], *filter(None, parts[1:-1]), parts[-1]]


def top_ngram_bound(words: list[str], size: int) -> float:
    """An upper bound on every top n-gram char fraction, divided by n: max over words of count x (chars
    + 1), over `size`. Each of the k occurrences of an n-gram holds an occurrence of each of its n
    words, so k x (its words' chars + n - 1) <= sum over its words of count x (chars + 1) <= n x that max.
    A Counter of words costs a fifth of counting the n-grams (~0.03 of 0.16 ms a page)."""
    if not words:
        return 0.0
    counts = Counter(words)
    n = len(counts)
    chars = np.fromiter(map(len, counts), dtype=np.int64, count=n) + 1
    return int((np.fromiter(counts.values(), dtype=np.int64, count=n) * chars).max()) / size


def measure(text: str, params: QualityParams, skip_bounded: bool = False) -> Quality:
    """Every value the filters compare: the language and Gopher's repetition fractions, over words split at
    whitespace. What no threshold can act on is not measured: the language when clean.quality.languages
    is empty, the n-grams (most of the cost) when all their thresholds are 1, and (skip_bounded: the
    filter's own call, whose decision this cannot change) the top n-grams of a text whose bound keeps
    each of them under its threshold."""
    language, score = None, 0.0
    if params.languages:
        language, score = detect_language(text, params.language_sample_chars)
    size = max(1, len(text))
    paragraphs, lines = split_paragraphs(text), split_lines(text)
    para_dups, para_chars = _duplicates(paragraphs)
    line_dups, line_chars = _duplicates(lines)
    top, dup = [], []
    dup_on = min(params.max_dup_ngram_char_frac) < 1
    if min(params.max_top_ngram_char_frac + params.max_dup_ngram_char_frac) < 1:
        words = text.split()
        if skip_bounded and not dup_on:
            bound = top_ngram_bound(words, size)
            if all(n * bound <= limit for n, limit in zip(TOP_NGRAMS, params.max_top_ngram_char_frac,
                                                           strict=True)):
                words = None
        if words is not None:
            top, dup = ngram_chars(words, dup=dup_on)
    return Quality(language, score, para_dups / len(paragraphs), para_chars / size, line_dups / len(lines),
                   line_chars / size, tuple(c / size for c in top), tuple(c / size for c in dup))


def judge(q: Quality, params: QualityParams) -> tuple[str, str] | None:
    """The first threshold `q` breaks as (reason, detail naming the value and the knob), else None."""
    p, key = params, "clean.quality"
    if q.language is not None and q.language not in p.languages:
        return "wrong_language", (f"detected {q.language} ({q.language_score:.2f}), "
                                  f"{key}.languages=[{', '.join(p.languages)}]")
    if q.language is not None and q.language_score < p.min_language_score:
        return "wrong_language", (f"detected {q.language} ({q.language_score:.2f}) < "
                                  f"{key}.min_language_score={p.min_language_score}")
    for reason, value, limit, what in (
        ("repeated_paragraphs", q.dup_para_frac, "max_dup_para_frac", "of paragraphs are duplicates"),
        ("repeated_paragraphs", q.dup_para_char_frac, "max_dup_para_char_frac",
         "of chars in duplicate paragraphs"),
        ("repeated_lines", q.dup_line_frac, "max_dup_line_frac", "of lines are duplicates"),
        ("repeated_lines", q.dup_line_char_frac, "max_dup_line_char_frac", "of chars in duplicate lines"),
    ):
        if value > getattr(p, limit):
            return reason, f"{value:.3f} {what} > {key}.{limit}={getattr(p, limit)}"
    for n, value, limit in zip(TOP_NGRAMS, q.top_ngram_char_frac, p.max_top_ngram_char_frac, strict=False):
        if value > limit:
            return "repeated_ngrams", (f"{value:.3f} of chars in the top {n}-gram > "
                                       f"{key}.max_top_ngram_char_frac[n={n}]={limit}")
    for n, value, limit in zip(DUP_NGRAMS, q.dup_ngram_char_frac, p.max_dup_ngram_char_frac, strict=False):
        if value > limit:
            return "repeated_ngrams", (f"{value:.3f} of chars in duplicate {n}-grams > "
                                       f"{key}.max_dup_ngram_char_frac[n={n}]={limit}")
    return None


def quality_drop(text: str, params: QualityParams) -> tuple[str, str] | None:
    return judge(measure(text, params, skip_bounded=True), params)
