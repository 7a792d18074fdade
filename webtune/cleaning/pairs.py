"""Instruction/response pairs from clean documents, built from the documents' own structure.

- doc_qa: a document is split into sections at its headings (markdown `#` headings, or reST-style
  titles underlined with `*** === --- ~~~`); the lead section answers a question about the document's
  title, every later section answers a question naming its heading. Answers are cut at a paragraph or
  sentence boundary below `max_answer_chars`; sections shorter than `min_answer_chars` are skipped.
- product_copy: a product record (Bright Data Amazon snapshot shape) becomes the copywriter prompt.

Pure functions: a doc dict in, pair dicts (or drop reasons) out.
"""

import dataclasses
import json
import re

from webtune.params import at_least, knob, one_of
from webtune.schema import provenance, short_hash


@dataclasses.dataclass(frozen=True)
class PairsParams:
    task: str = knob(one_of("doc_qa", "product_copy"))
    doc_question: str = knob()
    section_question: str = knob()
    min_answer_chars: int = knob(at_least(1))
    max_instruction_chars: int = knob(at_least(10))
    max_answer_chars: int = knob(at_least(1))
    product_system_prompt: str = knob()
    product_max_description_chars: int = knob(at_least(1))


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
# reST section adornments, and the heading level each gets (pydoc topics use * for titles, = and - below).
_UNDERLINE_LEVEL = {"*": 1, "=": 2, "-": 3, "~": 4, "^": 5, '"': 6}
_FENCE = re.compile(r"^\s*(```|~~~)")
_SENTENCE_END = re.compile(r"[.!?:][\"')\]]?\s")

PRODUCT_PROMPT = ("Write a crisp product description.\nTitle: {title}\nBrand: {brand}\n"
                  "Features: {features}\nDescription:")


@dataclasses.dataclass
class Section:
    heading: str  # "" for text before the first heading
    level: int
    body: str


def split_sections(text: str) -> list[Section]:
    """Split text at headings; code fences are never split and never hold headings."""
    lines = text.split("\n")
    sections: list[Section] = []
    heading, level, body = "", 0, []
    in_fence = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:  # a blank line is neither a fence, a heading nor a title
            body.append(line)
            i += 1
            continue
        if _FENCE.match(line):
            in_fence = not in_fence
        found = None
        if not in_fence:
            m = _MD_HEADING.match(line) if line.startswith("#") else None
            if m:
                found, step = (m.group(2).strip(), len(m.group(1))), 1
            elif i + 1 < len(lines) and _is_underline(line, lines[i + 1]):
                found, step = (line.strip(), _UNDERLINE_LEVEL[lines[i + 1].strip()[0]]), 2
        if found:
            sections.append(Section(heading, level, "\n".join(body).strip()))
            (heading, level), body = found, []
            i += step
            continue
        body.append(line)
        i += 1
    sections.append(Section(heading, level, "\n".join(body).strip()))
    return [s for s in sections if s.heading or s.body]


def _is_underline(title: str, underline: str) -> bool:
    first = underline[:1]
    if not (first in _UNDERLINE_LEVEL or first.isspace()):  # most lines start with a letter: not an underline
        return False
    u = underline.strip()
    return (
        bool(title.strip())
        and not title.startswith((" ", "\t"))
        and len(u) >= 3
        and u[0] in _UNDERLINE_LEVEL
        and u == u[0] * len(u)
        and len(u) >= len(title.strip())
    )


def cut(text: str, max_chars: int) -> str:
    """Cut text to at most max_chars at the last paragraph, else sentence, else word boundary."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    window = text[: max_chars + 1]
    paragraph = window.rfind("\n\n")
    if paragraph >= max_chars // 2:
        return window[:paragraph].rstrip()
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if sentence_ends and sentence_ends[-1] >= max_chars // 2:
        return window[: sentence_ends[-1]].rstrip()
    space = window.rfind(" ")
    return (window[:space] if space > 0 else window[:max_chars]).rstrip()


def _fit(template: str, max_chars: int, **fields: str) -> str:
    """Format a question; if too long, shorten the longest field at a word boundary (with an ellipsis)."""
    question = template.format(**fields)
    while len(question) > max_chars:
        longest = max(fields, key=lambda k: len(fields[k]))
        excess = len(question) - max_chars
        if len(fields[longest]) <= excess + 1:
            return cut(question, max_chars)
        fields[longest] = cut(fields[longest], len(fields[longest]) - excess - 1) + "…"
        question = template.format(**fields)
    return question


def _pair(doc: dict, task: str, system: str, instruction: str, response: str) -> dict:
    return provenance(doc) | {
        "pair_id": short_hash(doc["doc_id"], task, instruction),
        "task": task,
        "system": system,
        "instruction": instruction,
        "response": response,
    }


def doc_qa_pairs(doc: dict, params: PairsParams) -> tuple[list[dict], list[tuple[str, str]]]:
    """Pairs from one document's sections; also (reason, heading) for every section skipped."""
    pairs, skipped = [], []
    sections = split_sections(doc["text"])
    title = doc["title"].strip() or next((s.heading for s in sections if s.heading), "") or doc["url"]
    for index, section in enumerate(sections):
        answer = cut(section.body, params.max_answer_chars)
        if len(answer) < params.min_answer_chars:
            skipped.append(("answer_too_short", section.heading or "(lead)"))
            continue
        is_lead = index == 0 and (not section.heading or section.heading == title or section.level <= 1)
        if is_lead:
            question = _fit(params.doc_question, params.max_instruction_chars, title=title)
        else:
            question = _fit(params.section_question, params.max_instruction_chars, title=title,
                            heading=section.heading)
        pairs.append(_pair(doc, "doc_qa", "", question, answer))
    return pairs, skipped


def product_copy_pairs(doc: dict, params: PairsParams) -> tuple[list[dict], list[tuple[str, str]]]:
    """One product record -> the copywriter prompt and its description (task product_copy)."""
    if doc["record"] is None:
        return [], [("not_a_record", doc["url"])]
    record = json.loads(doc["record"])
    description = _text_field(record, "description") or _text_field(record, "about")
    if not description:
        return [], [("no_description", doc["url"])]
    features = record.get("features") or record.get("bullets") or []
    if isinstance(features, str):
        features = [features]
    prompt = PRODUCT_PROMPT.format(
        title=_text_field(record, "title") or "Unknown product",
        brand=_text_field(record, "brand") or "Unknown brand",
        features=", ".join(str(f).strip() for f in features if str(f).strip()),
    )
    response = description.strip()[: params.product_max_description_chars]
    return [_pair(doc, "product_copy", params.product_system_prompt, prompt, response)], []


def _text_field(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, list):
        value = " ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip() if value else ""


TASKS = {"doc_qa": doc_qa_pairs, "product_copy": product_copy_pairs}


def build_pairs(doc: dict, params: PairsParams) -> tuple[list[dict], list[tuple[str, str]]]:
    if params.task not in TASKS:  # params loading refuses it too; this guards direct callers
        raise ValueError(f"clean.pairs.task: unknown task {params.task!r} (known: {', '.join(TASKS)})")
    return TASKS[params.task](doc, params)
