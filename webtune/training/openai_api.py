"""The OpenAI fine-tuning API as the hosted backend (webtune.training.openai) uses it: the client, errors
as one line each, the model's shutdown date, the JSONL rules checked before anything is sent, and the
loss curve in a finished job's result file.

    client = client_for(params.openai, api_key)
    n = check_jsonl(path, max_example_tokens=65536, min_examples=MIN_EXAMPLES)   # TrainError naming the line
    job = Api(client, model).call(lambda: client.fine_tuning.jobs.retrieve(job_id))
"""

import csv
import datetime as dt
import io as stdio
import json
from pathlib import Path

from webtune.models import KEY_ENV
from webtune.training import TrainError

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
MIN_EXAMPLES = 10
# Shutdown dates from OpenAI's deprecations page (checked 2026-12), used when the API's model object
# does not say: the API's `shutdown_date` wins when present.
KNOWN_SHUTDOWN = {
    "gpt-4o-mini-2024-07-18": "2027-01-14",
    "gpt-4o-2024-08-06": "2027-01-14",
    "gpt-4.1-2025-04-14": "2027-01-14",
    "gpt-4.1-mini-2025-04-14": "2027-01-14",
}
LAST_JOB_DAY = "2027-01-06"  # the last day any organisation can create a fine-tuning job


def client_for(knobs, api_key: str):
    """An OpenAI client for train.openai: its base_url, else OpenAI's own."""
    import openai

    return openai.OpenAI(api_key=api_key, base_url=knobs.base_url or None)


def check_jsonl(path: Path, *, max_example_tokens: int, min_examples: int) -> int:
    """The number of examples in `path`; TrainError naming the first line that breaks the API's rules.

    Tokens are estimated without the model's tokenizer (not available offline): 4 bytes per token plus
    4 tokens per message, the usual estimate for these models' byte-level BPE; a row over the limit by
    that estimate is refused (the API would silently truncate it).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise TrainError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    n = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainError(f"{where}: not JSON ({e.msg}, column {e.colno})") from None
        messages = example.get("messages") if isinstance(example, dict) else None
        if not isinstance(messages, list) or not messages:
            raise TrainError(f"{where}: an example is an object with a non-empty messages list")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                role = m.get("role") if isinstance(m, dict) else None
                raise TrainError(f"{where}: messages[{i}] has role {role!r} (one of {', '.join(ROLES)})")
            if extra := set(m) - MESSAGE_KEYS:
                raise TrainError(f"{where}: messages[{i}] has unsupported keys {sorted(extra)}")
            if not isinstance(m.get("content"), str) or not m["content"].strip():
                raise TrainError(f"{where}: messages[{i}] ({m['role']}) has empty or missing content")
            if "weight" in m and (
                m["role"] != "assistant" or m["weight"] not in (0, 1) or isinstance(m["weight"], bool)
            ):
                raise TrainError(f"{where}: messages[{i}]: weight is 0 or 1, on assistant messages only")
        if not any(m["role"] == "assistant" for m in messages):
            raise TrainError(f"{where}: no assistant message: nothing to train on")
        estimate = len(line.encode()) // 4 + 4 * len(messages)
        if estimate > max_example_tokens:
            raise TrainError(
                f"{where}: ~{estimate:,} tokens, over the model's {max_example_tokens:,} per example "
                "(train.openai.max_example_tokens): shorten it or lower format.max_length"
            )
        n += 1
    if n < min_examples:
        raise TrainError(f"{path}: {n} examples; the API needs at least {min_examples} (50-100 recommended)")
    return n


class Api:
    """One place that turns the client's errors into one-line TrainErrors."""

    def __init__(self, client, model: str):
        self.client, self.model = client, model

    def call(self, make, creating: bool = False):
        import openai

        try:
            return make()
        except openai.PermissionDeniedError as e:
            raise TrainError(
                f"OpenAI refused (HTTP 403: {message(e)}): this organisation is not eligible for fine-tuning "
                f"{self.model} (self-serve fine-tuning is closing: no new jobs after {LAST_JOB_DAY}); "
                "not retried"
            ) from None
        except openai.AuthenticationError as e:
            raise TrainError(f"OpenAI refused the key (HTTP 401: {message(e)}): check {KEY_ENV}") from None
        except openai.RateLimitError as e:
            what = (
                "no job was created; run again (it looks for its tagged job first)"
                if creating
                else "retries spent"
            )
            raise TrainError(f"OpenAI rate limit (HTTP 429: {message(e)}): {what}") from None
        except openai.APIStatusError as e:
            raise TrainError(f"OpenAI API error (HTTP {e.status_code}: {message(e)})") from None
        except openai.APIConnectionError as e:
            hint = " (a job may have been created: a re-run looks for its tag first)" if creating else ""
            raise TrainError(f"cannot reach the OpenAI API ({type(e).__name__}){hint}") from None


def message(e) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    return " ".join(str(body.get("message") or e.message).split())


def check_model(client, model: str, today: dt.date) -> None:
    """TrainError for a model past its shutdown date (the API's word, else KNOWN_SHUTDOWN) or past the
    last day jobs can be created."""
    api = Api(client, model)
    info = api.call(lambda: client.models.retrieve(model))
    shutdown = getattr(info, "shutdown_date", None) or KNOWN_SHUTDOWN.get(model)
    if isinstance(shutdown, int | float):
        shutdown = dt.datetime.fromtimestamp(shutdown, dt.UTC).date().isoformat()
    if shutdown and today.isoformat() >= str(shutdown)[:10]:
        raise TrainError(
            f"train.openai.model {model} shut down on {str(shutdown)[:10]}: pick a current model"
        )
    host = str(getattr(getattr(client, "base_url", None), "host", "") or "")
    if today.isoformat() > LAST_JOB_DAY and host.endswith(
        "openai.com"
    ):  # other endpoints keep their own rules
        raise TrainError(f"OpenAI creates no fine-tuning jobs after {LAST_JOB_DAY}")


def result_curve(api, client, job) -> list[dict]:
    """The loss curve from the job's result file (a metrics CSV: step, train_loss, valid_loss, ...)."""
    for file_id in job.result_files or []:
        content = api.call(lambda f=file_id: client.files.content(f))
        text = content.read().decode("utf-8", "replace") if hasattr(content, "read") else str(content)
        rows = list(csv.DictReader(stdio.StringIO(text)))
        curve = []
        for row in rows:
            point = {}
            for key in ("step", "train_loss", "valid_loss"):
                value = (row.get(key) or "").strip()
                if value:
                    point[key] = int(float(value)) if key == "step" else float(value)
            if "step" in point:
                curve.append(point)
        if curve:
            return curve
    return []
