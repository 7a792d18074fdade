"""An optional pairwise LLM judge of evaluate's answers, through any OpenAI-compatible chat completions
endpoint: which of the base's and the adapter's answers to the same test prompt is better.

    key = read_key(params)                  # the environment or .env; only a stage's main calls this
    result = judge(items, params, cache=Path("judge.sqlite"), api_key=key, progress=print)
    result.scores       # per item, the adapter's side: +1 much better ... -1 much worse
    result.verdicts     # per item, the two labels: (A=base, B=adapter), (A=adapter, B=base)
    result.summary      # adapter_wins, base_wins, ties, win_rate, mean_score, unparsed, usage

Each item is judged twice, once in each order, and its score is the mean of the two orders' scores, so
a judge that favours the first (or second) answer cancels out: one that always says A>B scores 0.
Prompt, labels and the length tie rule: webtune.evaluation.judge_prompt.

Never paying twice. Every reply is cached in a SQLite file keyed by sha256 over (judge model, prompt
version, question, reference, answer A, answer B), so the order is part of the key; a re-run over the
same inputs makes no HTTP call, a changed answer re-asks only its item's two orders. Each reply is
committed as it arrives (with its token usage and finish reason), so a killed or failed run keeps every
verdict it was sent. Only the main thread touches the database; `workers` threads only make requests.
A reply cut at max_tokens is asked again only when max_tokens has grown since.

Errors: an API error after the SDK's retries (429 and 5xx are retried, honouring Retry-After) is one
JudgeError line naming the judge's model, URL and HTTP status, with the key redacted; requests not yet
sent are cancelled.
"""

import concurrent.futures as futures
import contextlib
import dataclasses
import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from webtune import io, secrets
from webtune.errors import UserError, one_line
from webtune.evaluation.judge_prompt import PROMPT_VERSION, UNPARSED, judge_messages, order_score, parse_label
from webtune.params import api_url, at_least, knob

MAX_RETRIES = 4  # the SDK's backoff (0.5 s doubling, or Retry-After) rides out a burst of 429s from workers
TIMEOUT_S = 120.0  # one verdict; the SDK's default (600 s) would hold a stuck worker for ten minutes
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class JudgeParams:
    base_url: str = knob(lambda v: None if v == "" else api_url(v))  # "": the judge is off
    model: str = knob()
    key_env: str = knob(lambda v: None if _ENV_NAME.fullmatch(v) else f"{v!r} is not a variable name")
    max_tokens: int = knob(at_least(1))
    length_margin: int = knob(at_least(0))
    workers: int = knob(at_least(1))

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def problems(self):
        if self.base_url and not self.model.strip():
            yield "model", "must name the judge model when base_url is set"


class JudgeError(UserError):
    """The judge's endpoint refused or could not be reached (one line: model, URL, status)."""


@dataclasses.dataclass(frozen=True)
class JudgeItem:
    question: str
    reference: str
    base: str  # the base model's answer
    adapter: str  # the adapter's answer


@dataclasses.dataclass(frozen=True)
class JudgeResult:
    scores: list[float]  # per item, adapter's side, in [-1, 1] (multiples of 0.25)
    verdicts: list[tuple[str, str]]  # per item: the label with A=base, the label with A=adapter
    summary: dict


@dataclasses.dataclass(frozen=True)
class Reply:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


def read_key(params: JudgeParams, *, environ=None, dotenv: Path = secrets.DOTENV) -> str:
    """The judge's API key from the environment or .env (params.key_env), or a one-line error."""
    return secrets.require(params.key_env, needed_by=f"evaluate.judge ({params.model} at {params.base_url})",
                           environ=environ, dotenv=dotenv)


def cache_key(model: str, question: str, reference: str, answer_a: str, answer_b: str) -> str:
    # a JSON list, not a concatenation: ("ab", "c") and ("a", "bc") are different keys
    fields = [model, PROMPT_VERSION, question, reference, answer_a, answer_b]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()


class VerdictCache:
    """The judge's replies by cache_key in one SQLite file, each committed as it is put."""

    def __init__(self, path: Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=30)  # another process writing waits, not fails
        self.db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                        "reply TEXT NOT NULL, finish_reason TEXT NOT NULL, max_tokens INTEGER NOT NULL, "
                        "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL)")
        self.db.commit()

    def get(self, key: str, max_tokens: int) -> Reply | None:
        row = self.db.execute("SELECT reply, finish_reason, prompt_tokens, completion_tokens, max_tokens "
                              "FROM verdicts WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        reply, budget = Reply(*row[:4]), row[4]
        # a reply cut at a smaller budget lost its verdict line, maybe: a bigger budget may find it
        return None if reply.finish_reason == "length" and budget < max_tokens else reply

    def put(self, key: str, model: str, max_tokens: int, reply: Reply) -> None:
        with self.db:  # one transaction, committed on exit
            self.db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (key, model, reply.text, reply.finish_reason, max_tokens, reply.prompt_tokens,
                             reply.completion_tokens))

    def close(self) -> None:
        self.db.close()


def _ask(client, params: JudgeParams, messages: list[dict], api_key: str) -> Reply:
    """One verdict (temperature 0); a JudgeError once the SDK's retries are spent."""
    import openai

    where = f"judge {params.model} at {params.base_url}"
    try:
        response = client.chat.completions.create(model=params.model, messages=messages, temperature=0,
                                                  max_completion_tokens=params.max_tokens)
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        detail = one_line(secrets.redact(str(body.get("message") or e.message), api_key))
        hint = f" (check {params.key_env})" if e.status_code == 401 else ""
        raise JudgeError(f"{where}: HTTP {e.status_code}: {detail}{hint}") from None
    except openai.APIConnectionError as e:
        raise JudgeError(f"{where}: cannot reach the API ({type(e).__name__})") from None
    usage = response.usage
    choice = response.choices[0] if response.choices else None
    return Reply(text=(choice.message.content or "") if choice else "",
                 finish_reason=(choice.finish_reason or "") if choice else "",
                 prompt_tokens=usage.prompt_tokens if usage else 0,
                 completion_tokens=usage.completion_tokens if usage else 0)


def _orders(item: JudgeItem) -> tuple[tuple[bool, str, str], ...]:
    """(adapter_is_a, answer A, answer B) of the item's two judgements: base first, then adapter first."""
    return (False, item.base, item.adapter), (True, item.adapter, item.base)


def judge(items: Sequence[JudgeItem], params: JudgeParams, *, cache: Path, api_key: str,
          progress: Callable[[str], None] = io.stderr) -> JudgeResult:
    """Score the adapter's answers against the base's, each item in both orders (the module docstring)."""
    if not params.enabled:
        raise ValueError("the judge is off (base_url is empty): nothing to ask")
    asks = [(item, a, b) for item in items for _, a, b in _orders(item)]  # 2 per item, in _orders' order
    keys = [cache_key(params.model, item.question, item.reference, a, b) for item, a, b in asks]
    distinct = dict(zip(keys, asks, strict=True))  # identical answers: both orders are one prompt
    with contextlib.closing(VerdictCache(cache)) as store:
        replies = {key: hit for key in distinct if (hit := store.get(key, params.max_tokens)) is not None}
        cached = len(replies)

        def line(done: int) -> None:
            progress(f"judge {cached + done}/{len(distinct)} verdicts ({cached} cached)")

        line(0)
        todo = {key: judge_messages(item.question, item.reference, a, b)
                for key, (item, a, b) in distinct.items() if key not in replies}
        asked = _ask_all(todo, params, store, api_key, line)
    replies |= asked
    return _result(items, keys, replies, params, asked, cached)


def _ask_all(todo: dict[str, list[dict]], params: JudgeParams, store: VerdictCache, api_key: str,
             progress: Callable[[int], None]) -> dict[str, Reply]:
    """The replies to `todo` (key -> messages), each stored as it arrives; on the first error the
    requests not yet sent are cancelled, the ones in flight are awaited and stored, then it is raised."""
    if not todo:
        return {}
    import openai

    client = openai.OpenAI(base_url=params.base_url, api_key=api_key, max_retries=MAX_RETRIES,
                           timeout=TIMEOUT_S)
    every = max(1, len(todo) // 10)  # about ten progress lines a run
    got, failure = {}, None
    pool = futures.ThreadPoolExecutor(params.workers, thread_name_prefix="judge")
    try:
        pending = {pool.submit(_ask, client, params, messages, api_key): key
                   for key, messages in todo.items()}
        for future in futures.as_completed(pending):
            if future.cancelled():
                continue
            if (error := future.exception()) is not None:
                if failure is None:
                    failure = error
                    for other in pending:
                        other.cancel()
                continue
            got[pending[future]] = reply = future.result()
            store.put(pending[future], params.model, params.max_tokens, reply)
            if len(got) % every == 0 or len(got) == len(todo):
                progress(len(got))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: send nothing more
    if failure is not None:
        raise failure
    return got


def _result(items, keys, replies: dict[str, Reply], params: JudgeParams, asked: dict[str, Reply],
            cached: int) -> JudgeResult:
    scores, verdicts = [], []
    for i, item in enumerate(items):
        labels = tuple(parse_label(replies[key].text) for key in keys[2 * i : 2 * i + 2])
        scores.append(sum(order_score(label, a, b, adapter_is_a=first, length_margin=params.length_margin)
                          for label, (first, a, b) in zip(labels, _orders(item), strict=True)) / 2)
        verdicts.append(labels)
    n = len(items)
    wins, losses = sum(s > 0 for s in scores), sum(s < 0 for s in scores)
    ties = n - wins - losses
    everything = [replies[key] for key in dict.fromkeys(keys)]  # each distinct prompt once
    summary = {
        "adapter_wins": wins, "base_wins": losses, "ties": ties,
        "win_rate": round((wins + ties / 2) / n, 6) if n else None,
        "mean_score": round(sum(scores) / n, 6) if n else None,
        "unparsed": sum(label == UNPARSED for pair in verdicts for label in pair),
        "usage": {
            "calls": len(asked), "cached": cached,  # verdicts asked (the SDK's retries aside), read
            "prompt_tokens": sum(r.prompt_tokens for r in asked.values()),
            "completion_tokens": sum(r.completion_tokens for r in asked.values()),
            "prompt_tokens_with_cached": sum(r.prompt_tokens for r in everything),
            "completion_tokens_with_cached": sum(r.completion_tokens for r in everything),
        },
    }
    return JudgeResult(scores, verdicts, summary)
