"""Scoring greedy answers against reference answers: per-answer statistics, summed by webtune.evaluation.

    stats = answer_stats(answers, references)   # {metric: array (n answers, k)} for every answer metric
    loops("It is used to ... It is used to ... It is used to ...")  # True: a 4-gram occurs 3 times

- chrF (sacrebleu's character 6-grams): the per-answer n-gram counts, so corpus chrF with beta 1 (precision
  and recall weighed alike), its precision and recall, and chrF2 (sacrebleu's default, recall weighed 4x:
  an answer that runs on collects recall from its length alone) all come from the same counts;
- ROUGE-L (rouge-score: longest common word subsequence) precision, recall and F1;
- semantic similarity: the cosine of WordLlama embeddings of answer and reference (16 MB of weights inside
  its wheel: no download);
- length ratio (answer over reference characters), stop rate, loop rate, answer tokens.
"""

import functools
import logging
import os
from collections import Counter
from collections.abc import Sequence

import numpy as np

from webtune.models.chat import Answer

# An answer is caught in a loop when one word 4-gram occurs LOOP_REPEATS times. Four words are a phrase
# ("the value of the"), not a collocation ("of the") that any paragraph repeats; a phrase said twice is
# ordinary prose (a definition restated, a parallel list), a third time is a model going round in circles.
LOOP_NGRAM = 4
LOOP_REPEATS = 3


def loops(text: str) -> bool:
    """True when the same LOOP_NGRAM-word sequence occurs at least LOOP_REPEATS times in `text`.

    Words are `text.split()` (whitespace, case-sensitive, punctuation kept: "condition." is not
    "condition"); occurrences may overlap ("a a a a a a" holds the 4-gram "a a a a" three times).
    So a run of newlines (no words) and a repeat without spaces ("aaaa...": one word) are never loops.
    """
    words = text.split()
    grams = Counter(tuple(words[i : i + LOOP_NGRAM]) for i in range(len(words) - LOOP_NGRAM + 1))
    return any(n >= LOOP_REPEATS for n in grams.values())


def chrf_counts(hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """(n, 18): [hyp, ref, match] character n-gram counts per order 1..6 of each answer, sacrebleu's own.

    `_extract_corpus_statistics` is sacrebleu's internal API, the one its paired significance tests use:
    its public scores are sentence or corpus totals, and a bootstrap needs the per-answer counts."""
    from sacrebleu.metrics import CHRF

    if not hypotheses:
        return np.zeros((0, 18))
    return np.asarray(CHRF()._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype=float)


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    logging.getLogger("absl").setLevel(logging.WARNING)  # "Using default tokenizer." on every scorer
    return rouge_scorer.RougeScorer(["rougeL"])


@functools.cache
def _embedder():
    import wordllama

    # A plain load() looks in tokenizer/ while the wheel ships tokenizers/, so it would try the Hub.
    return wordllama.WordLlama.load(cache_dir=os.path.dirname(wordllama.__file__), disable_download=True)


def similarities(answers: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Cosine similarity of each answer's embedding with its reference's (0 for an empty answer)."""
    if not answers:
        return np.zeros(0)
    model = _embedder()
    with np.errstate(invalid="ignore", divide="ignore"):  # an empty text's embedding is 0 / 0 when normed
        a, r = model.embed(list(answers), norm=True), model.embed(list(references), norm=True)
    sims = np.nan_to_num((a * r).sum(-1))
    return np.where([bool(x.strip()) for x in answers], sims, 0.0)


def answer_stats(answers: Sequence[Answer], references: Sequence[str]) -> dict[str, np.ndarray]:
    """{metric: (n, k) per-answer stats} for every answer metric: webtune.evaluation.METRICS[metric].value of
    their column sums is the metric over all answers, and of a resample's sums, over that resample."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    texts, ones = [a.text for a in answers], np.ones(len(answers))
    chrf = chrf_counts(texts, references)
    rouge = [_rouge().score(r, t)["rougeL"] for t, r in zip(texts, references, strict=True)]

    def mean_of(values) -> np.ndarray:
        return np.column_stack([np.asarray(values, dtype=float).reshape(-1), ones])

    return {
        "chrf1": chrf, "chrf_precision": chrf, "chrf_recall": chrf, "chrf2": chrf,
        "rougeL_f1": mean_of([s.fmeasure for s in rouge]),
        "rougeL_precision": mean_of([s.precision for s in rouge]),
        "rougeL_recall": mean_of([s.recall for s in rouge]),
        "similarity": mean_of(similarities(texts, references)),
        "length_ratio": np.column_stack([[len(t) for t in texts], [len(r) for r in references]]).astype(float)
        if answers else np.zeros((0, 2)),
        "stop_rate": mean_of([a.stopped for a in answers]),
        "loop_rate": mean_of([loops(t) for t in texts]),
        "answer_tokens": mean_of([a.tokens for a in answers]),
    }
