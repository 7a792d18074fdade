"""The per-document cleaning steps, pure functions the clean stage runs in its worker processes.

  extract      HTML -> main-content markdown with resiliparse (scripts, styles, navigation, footers removed;
               headings kept as `#`); markdown keeps text but loses image/link markup
  normalise    Unicode normalisation (clean.unicode_form), line endings, blank-line runs
  remove_boilerplate   short navigation/boilerplate lines (never inside code fences)
  mask         API-key shapes (an AWS access key id with the secret key that follows it) and e-mail
               addresses
  score_doc    all of the above for one raw row, then length bounds, the web-quality filters (quality.py:
               language, repetition) and a dedup key (score first: the stage applies the thresholds, and
               dedups with `minhash` signatures)
Every format's chat control tags are neutralised (`<|x|>` -> `<¦x¦>`): scraped text is data.
"""

import collections
import functools
import hashlib
import html
import json
import re
import unicodedata

from rensa import RMinHash
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

from webtune.cleaning import CleanParams
from webtune.cleaning.quality import quality_drop
from webtune.formats import count_control_tags, neutralise
from webtune.sources import HTML, MARKDOWN, RECORD

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# API-key shapes of the providers this tool talks to, and the common generic ones.
SECRETS = re.compile(
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id (ASIA: temporary STS credentials)
    # (?!<secret>): a key that _AWS_KEY_PAIR masked already is not masked, and counted, a second time.
    r"|(?i:aws_secret_access_key)\s*[:=]\s*(?!<secret>)\S+"  # AWS secret in config syntax
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"  # GitHub
    r"|\bhf_[A-Za-z0-9]{30,}"  # Hugging Face
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google
    r"|\bBearer\s+[A-Za-z0-9._~+/-]{20,}=*"  # bearer tokens in pasted headers
)
# An AWS secret access key (40 chars of base64 alphabet, a token of its own) within 100 chars after an
# access key id: one line, the next line, a CSV row, or a label like "Secret access key:" between. Not a
# 40-char hex token (a git sha; a real key is all lowercase hex with probability (16/64)^40). `gap`
# keeps the text between, so both the id and the key become <secret> and the label survives.
# detect-secrets (Yelp, 1.5.0) was tried instead: its AWSKeyDetector finds the id but none of these
# bare keys (it takes a key only quoted after an `aws...key =` name: `aws_secret_access_key = '...'`),
# and its whole plugin set scans prose at 0.05 MB/s with 85,157 hits on 0.5 MB of plain sentences.
# `A(?<!\wA)[KS]IA` is `\b(?:AKIA|ASIA)` with a literal first char, which re scans for: ~70 MB/s, not ~20.
_AWS_KEY_PAIR = re.compile(
    r"A(?<!\wA)[KS]IA[0-9A-Z]{16}\b(?P<gap>.{0,100}?)"
    r"(?<![A-Za-z0-9/+_-])(?![0-9a-f]{40})[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=_-])",
    re.S,
)
_MD_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_MINIMAL_HTML_HEADING = re.compile(r"<h([1-6])>(.*?)</h\1>", re.S)
_MINIMAL_HTML_PRE = re.compile(r"<pre>(.*?)</pre>", re.S)
_MINIMAL_HTML_TAG = re.compile(r"</?(?:p|ul|ol|li|br|a|h[1-6]|pre)\b[^>]*>")
_BLANK_RUNS = re.compile(r"\n{3,}")
_WORD = re.compile(r"\w+")
# A literal each SECRETS alternative contains. The regex tries its eight alternatives at every position
# (~7 MB/s, most of clean's time); a text holding none of these cannot match, so it skips the regex.
# (One regex per hint: each has a literal prefix that re scans for fast; an alternation has none.)
_SECRET_HINTS = ("sk-", "AKIA", "ASIA", "hf_", "xox", "AIza", "Bearer")
_GITHUB_HINT = re.compile("gh[pousr]_")
_AWS_HINT = re.compile("_[sS\u017f][eE][cC][rR][eE][tT]_")  # (?i:) lets U+017F (long s) match s too
# ASCII text (most pages): \w is [A-Za-z0-9_], so translating every other byte to a space and splitting
# finds the same words as _WORD, ~3x faster; rensa hashes a bytes token exactly as its str's UTF-8.
_ASCII_NON_WORD = bytes(c if chr(c).isalnum() or chr(c) == "_" else 32 for c in range(128)) + b" " * 128


def extract(body: str, content_type: str) -> tuple[str, str]:
    """Raw body -> (text, title). HTML goes through resiliparse's main-content extraction."""
    if content_type == HTML:
        tree = HTMLTree.parse(body)
        title = (tree.title or "").strip()
        # minimal_html keeps <h1-6>, <p>, lists and <pre>: enough to rebuild markdown headings.
        minimal = extract_plain_text(tree, main_content=True, preserve_formatting="minimal_html",
                                     alt_texts=False, links=False)
        return minimal_html_to_markdown(minimal), title
    if content_type == MARKDOWN:
        return _MD_LINK.sub(r"\1", _MD_IMAGE.sub(r"\1", body)), ""
    return body, ""


def minimal_html_to_markdown(minimal: str) -> str:
    text = _MINIMAL_HTML_HEADING.sub(lambda m: "#" * int(m.group(1)) + " " + m.group(2).strip(), minimal)
    text = _MINIMAL_HTML_PRE.sub(lambda m: "```\n" + m.group(1).strip("\n") + "\n```", text)
    return html.unescape(_MINIMAL_HTML_TAG.sub("", text))


def normalise(text: str, form: str) -> str:
    text = unicodedata.normalize(form, text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    if "\n\n\n" in text:  # the regex scans every position; most texts have no run to collapse
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


@functools.lru_cache(maxsize=8)
def _compile(patterns: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def remove_boilerplate(text: str, patterns: tuple[str, ...], max_words: int) -> tuple[str, int]:
    """Drop short lines that match a boilerplate pattern (never inside code fences)."""
    if not patterns:
        return text, 0
    pattern = _compile(patterns)
    kept, removed, in_fence = [], 0, False
    for line in text.split("\n"):
        if not line:  # a blank line (a third of all lines) is neither a fence nor boilerplate
            kept.append(line)
            continue
        lead = line.lstrip()
        if lead.startswith(("```", "~~~")):
            in_fence = not in_fence
        # Without a leading #*-•|> the stripped line is `lead` less trailing space, with as many words:
        # count them first (split(None, k) has more than k parts exactly when split() has, and stops
        # early), so a paragraph line costs no copies.
        if not in_fence and lead and (lead[0] in "#*-•|>" or len(lead.split(None, max_words)) <= max_words):
            stripped = lead.rstrip().lstrip("#*-•|> ").strip()
            if stripped and len(stripped.split(None, max_words)) <= max_words and pattern.search(stripped):
                removed += 1
                continue
        kept.append(line)
    return "\n".join(kept), removed


def mask(text: str, *, emails: bool, secrets: bool) -> tuple[str, int, int]:
    n_secrets = n_emails = 0
    if secrets and (any(h in text for h in _SECRET_HINTS) or _GITHUB_HINT.search(text)
                    or _AWS_HINT.search(text)):
        n_pairs = 0
        if "AKIA" in text or "ASIA" in text:  # before SECRETS, which would mask the id and lose the anchor
            text, n_pairs = _AWS_KEY_PAIR.subn(r"<secret>\g<gap><secret>", text)
        text, n_secrets = SECRETS.subn("<secret>", text)
        n_secrets += 2 * n_pairs
    if emails and "@" in text:
        text, n_emails = EMAIL.subn("<email>", text)
    return text, n_emails, n_secrets


def clean_text(text: str, params: CleanParams, stats: collections.Counter) -> str:
    """Normalise, strip boilerplate lines, mask, neutralise; count what changed into `stats`."""
    text = normalise(text, params.unicode_form)
    text, n_lines = remove_boilerplate(text, params.boilerplate_patterns, params.boilerplate_max_words)
    if n_lines and "\n\n\n" in text:  # a removed line between two blank ones leaves a run behind
        text = _BLANK_RUNS.sub("\n\n", text)
    text, n_emails, n_secrets = mask(text, emails=params.mask_emails, secrets=params.mask_secrets)
    n_tags = count_control_tags(text)
    stats.update(boilerplate_lines=n_lines, emails_masked=n_emails, secrets_masked=n_secrets,
                 control_tags=n_tags)
    return neutralise(text).strip()


def _clean_record(value, params: CleanParams, stats: collections.Counter):
    if isinstance(value, str):
        return clean_text(value, params, stats)
    if isinstance(value, list):
        return [_clean_record(v, params, stats) for v in value]
    if isinstance(value, dict):
        return {k: _clean_record(v, params, stats) for k, v in value.items()}
    return value


def dedup_key(text: str) -> bytes:
    """Exact-duplicate key: case and whitespace do not make a document new.

    A 16-byte digest, not the text: the dedup indexes live for the whole corpus, so their size per
    document is what bounds clean's memory.
    """
    return hashlib.blake2b(" ".join(text.lower().split()).encode(), digest_size=16).digest()


def minhash(text: str, params: CleanParams) -> RMinHash:
    """MinHash of the n-word shingles of the lowercased text (an n-word text or shorter: one shingle)."""
    lowered, n = text.lower(), params.shingle_words
    if lowered.isascii():
        words, sep = lowered.encode().translate(_ASCII_NON_WORD).split(), b" "
    else:
        words, sep = _WORD.findall(lowered), " "
    if len(words) <= n or n < 1:
        shingles = [sep.join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))]
    else:  # the same shingles, without slicing the word list once per shingle
        shingles = [sep.join(t) for t in zip(*(words[k:] for k in range(n)), strict=False)]
    m = RMinHash(num_perm=params.minhash_permutations, seed=params.seed)
    m.update(shingles)
    return m


def score_doc(raw: dict, params: CleanParams) -> dict:
    """One raw row -> a scored row: clean text, drop reason (or None), dedup key, MinHash, stats."""
    stats = collections.Counter()
    out = {"raw": raw, "drop": None, "stats": stats, "text": "", "title": raw["title"], "record": None}
    if raw["fetch_error"]:
        out["drop"] = (raw["fetch_error"], f"scrape failed: {raw['fetch_detail']}")
        return out
    body = raw["body"]
    # decode_bytes counts two kinds of bad chars: U+FFFD replacements, which stay in the body, and control
    # bytes, which it removed. Only the removed ones are missing from len(body).
    removed = raw["n_bad_chars"] - body.count("\ufffd")
    bad_ratio = raw["n_bad_chars"] / max(1, len(body) + removed)
    if bad_ratio > params.max_bad_char_ratio:
        out["drop"] = ("mostly_garbage", f"{bad_ratio:.0%} of chars undecodable or control bytes")
        return out
    if raw["content_type"] == RECORD:
        record = _clean_record(json.loads(raw["record"]), params, stats)
        out["record"] = json.dumps(record, ensure_ascii=False, sort_keys=True)
        # The text of a record is what dedup and length bounds look at.
        parts = [record.get(k) for k in ("title", "brand", "description", "about", "features", "bullets")]
        text = "\n".join(" ".join(map(str, p)) if isinstance(p, list) else str(p) for p in parts if p)
    else:
        text, title = extract(body, raw["content_type"])
        text = clean_text(text, params, stats)
        out["title"] = clean_text(title or raw["title"], params, collections.Counter())
    out["title"] = neutralise(out["title"])
    out["text"] = text
    if not text.strip():
        out["drop"] = ("empty_after_extraction", "no text left after extraction and cleaning")
    elif len(text) < params.min_chars:
        out["drop"] = ("too_short", f"{len(text)} chars < clean.min_chars={params.min_chars}")
    elif len(text) > params.max_chars:
        out["drop"] = ("too_long", f"{len(text)} chars > clean.max_chars={params.max_chars}")
    elif drop := quality_drop(text, params.quality):  # a record's text too: it is what gets paired
        out["drop"] = drop
    else:
        out["dedup_key"] = dedup_key(text)  # its MinHash is the signature step's (cleaning.steps)
    return out


def score_batch(rows: list[dict], params: CleanParams) -> list[dict]:
    return [score_doc(row, params) for row in rows]
