"""The hosted backend (flow A): a supervised fine-tune through the OpenAI API of the format stage's JSONL.

    train.backend: openai      # knobs: train.openai; key: OPENAI_API_KEY (environment or .env)

check the JSONL -> upload train and val -> create the job -> poll it, with its events as progress -> the
adapter folder names the `ft:` model. Before anything is sent the files are checked against the API's
rules (>= 10 examples; roles; non-empty content; an assistant turn; `weight` only 0/1 and only on
assistant messages; the model's per-example token limit), failing with the line number; the model's
shutdown date is checked too.

Never paying twice. The client sends no idempotency key, so `files.create` and `jobs.create` run with
max_retries=0 (an automatic retry after a timeout could create a second job), and the run's state goes
to `models/checkpoints/openai-job.json` (the stage's persistent folder) the moment each id exists: file
ids after each upload, the job id right after create. The job is also tagged (`metadata.webtune_run`,
a hash of the files and knobs), so a re-run whose state file is gone finds the job with `jobs.list`
before it would create another. A killed run resumes polling the stored job. Failed, cancelled and
403-not-eligible jobs, a model past its shutdown date and a missing key each end in one line, exit 1; a
fresh job after a failure happens only when the knobs or the data change (a new tag) or the state file
is deleted on purpose.

On success the adapter folder holds `hosted.json` (the fine-tuned model id, job id, trained tokens, the
base model, the endpoint) and a model card; the loss curve from the job's result file (its metrics CSV,
else the metrics events) becomes the same dvclive curve (`train/loss`, `eval/loss`) the local backends
draw, so `dvc plots` shows it.
"""

import csv
import dataclasses
import datetime as dt
import hashlib
import io as stdio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from webtune import io, secrets
from webtune.models import KEY_ENV
from webtune.params import api_url, at_least, between, knob, positive
from webtune.training import TrainError


@dataclasses.dataclass(frozen=True)
class OpenAIParams:
    model: str = knob(lambda v: None if v.strip() else "must name a model")
    n_epochs: int = knob(between(0, 50))
    batch_size: int = knob(at_least(0))
    learning_rate_multiplier: float = knob(at_least(0))
    suffix: str = knob(lambda v: None if len(v) <= 64 else f"at most 64 characters, got {len(v)}")
    base_url: str = knob(lambda v: None if v == "" else api_url(v))
    max_example_tokens: int = knob(at_least(1))
    poll_interval_s: float = knob(positive)
    poll_timeout_s: float = knob(positive)


PARAMS = OpenAIParams  # this variant's section (webtune.registry; webtune.params builds it)

STATE_FILE = "openai-job.json"
ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = {"role", "content", "name", "weight"}
MIN_EXAMPLES = 10
DONE = ("succeeded", "failed", "cancelled")
# Shutdown dates from OpenAI's deprecations page (checked 2026-12), used when the API's model object
# does not say: the API's `shutdown_date` wins when present.
KNOWN_SHUTDOWN = {
    "gpt-4o-mini-2024-07-18": "2027-01-14",
    "gpt-4o-2024-08-06": "2027-01-14",
    "gpt-4.1-2025-04-14": "2027-01-14",
    "gpt-4.1-mini-2025-04-14": "2027-01-14",
}
LAST_JOB_DAY = "2027-01-06"  # the last day any organisation can create a fine-tuning job


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


def run_tag(knobs, seed: int, file_md5: dict[str, str]) -> str:
    """What identifies this fine-tune: the same tag means the same job (already paid for)."""
    defining = {
        "knobs": {
            k: getattr(knobs, k)
            for k in ("model", "n_epochs", "batch_size", "learning_rate_multiplier", "suffix")
        },
        "seed": seed,
        "files": file_md5,
    }
    return hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class HostedResult:
    fine_tuned_model: str
    job_id: str
    trained_tokens: int | None
    curve: list[dict]  # {"step", "train_loss", "valid_loss"?} from the result file or events
    status: str = "succeeded"


class OpenAIBackend:
    name = "openai"
    hosted = True  # the train stage hands it files, not a loaded base

    def run(
        self,
        *,
        params,
        train_jsonl: Path,
        val_jsonl: Path,
        state_dir: Path,
        client,
        progress: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        today: dt.date | None = None,
    ) -> HostedResult:
        knobs = params.openai
        check_model(client, knobs.model, today or dt.datetime.now(dt.UTC).date())
        n_train = check_jsonl(
            train_jsonl, max_example_tokens=knobs.max_example_tokens, min_examples=MIN_EXAMPLES
        )
        has_val = val_jsonl.is_file() and val_jsonl.read_text().strip() != ""
        if has_val:
            check_jsonl(val_jsonl, max_example_tokens=knobs.max_example_tokens, min_examples=1)
        md5 = {
            "train": hashlib.md5(train_jsonl.read_bytes()).hexdigest(),
            "val": hashlib.md5(val_jsonl.read_bytes()).hexdigest() if has_val else None,
        }
        tag = run_tag(knobs, params.seed, md5)
        state_path = state_dir / STATE_FILE
        state = read_state(state_path, tag)
        once = client.with_options(max_retries=0)  # creating calls: never retried automatically
        api = Api(client, knobs.model)

        if "job_id" not in state:
            found = api.call(lambda: client.fine_tuning.jobs.list(metadata={"webtune_run": tag}, limit=10))
            live = [j for j in found.data if j.status not in ("failed", "cancelled")]
            if live:
                state["job_id"] = live[0].id
                progress(f"train: found job {live[0].id} tagged {tag} ({live[0].status}): resuming it")
                write_state(state_path, state)
        if "job_id" not in state:
            for split, path in (("train", train_jsonl), ("val", val_jsonl if has_val else None)):
                if path is not None and f"{split}_file" not in state:
                    uploaded = api.call(
                        lambda p=path: once.files.create(file=(p.name, p.read_bytes()), purpose="fine-tune")
                    )
                    state[f"{split}_file"] = uploaded.id
                    write_state(state_path, state)
                    progress(
                        f"train: uploaded {path} ({n_train if split == 'train' else 'val'} examples) "
                        f"as {uploaded.id}"
                    )
            hyper = {
                "n_epochs": knobs.n_epochs or "auto",
                "batch_size": knobs.batch_size or "auto",
                "learning_rate_multiplier": knobs.learning_rate_multiplier or "auto",
            }
            job = api.call(
                lambda: once.fine_tuning.jobs.create(
                    model=knobs.model,
                    training_file=state["train_file"],
                    validation_file=state.get("val_file"),
                    suffix=knobs.suffix or None,
                    seed=params.seed,
                    metadata={"webtune_run": tag},
                    method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
                ),
                creating=True,
            )
            state["job_id"] = job.id
            write_state(state_path, state)  # before the first poll
            progress(f"train: created job {job.id} on {knobs.model} (tag {tag}); a re-run resumes it")
        return self.poll(api, client, state["job_id"], knobs, progress, sleep, clock)

    def poll(self, api, client, job_id: str, knobs, progress, sleep, clock) -> HostedResult:
        deadline = clock() + knobs.poll_timeout_s
        seen_events: set[str] = set()
        events_curve: list[dict] = []
        while True:
            job = api.call(lambda: client.fine_tuning.jobs.retrieve(job_id))
            events = api.call(lambda: client.fine_tuning.jobs.list_events(job_id, limit=50))
            for event in reversed(list(events.data)):  # the API lists newest first
                if event.id in seen_events:
                    continue
                seen_events.add(event.id)
                progress(f"train: {job_id}: {event.message}")
                data = event.data if isinstance(event.data, dict) else {}
                if event.type == "metrics" and "step" in data:
                    events_curve.append(
                        {k: data[k] for k in ("step", "train_loss", "valid_loss") if k in data}
                    )
            if job.status == "succeeded":
                return HostedResult(
                    job.fine_tuned_model,
                    job_id,
                    job.trained_tokens,
                    result_curve(api, client, job) or events_curve,
                )
            if job.status == "failed":
                error = job.error
                why = f"{error.code}: {error.message}" if error else "no error given"
                raise TrainError(
                    f"fine-tuning job {job_id} failed ({why}); nothing was written. Fix the data or "
                    "knobs (a new run is a new job), or delete models/checkpoints/openai-job.json "
                    "to retry the same one"
                )
            if job.status == "cancelled":
                raise TrainError(f"fine-tuning job {job_id} was cancelled; nothing was written")
            if clock() + knobs.poll_interval_s > deadline:
                raise TrainError(
                    f"fine-tuning job {job_id} is still {job.status!r} after "
                    f"{knobs.poll_timeout_s:g} s (train.openai.poll_timeout_s): run again to keep "
                    "waiting for it; no second job is created"
                )
            sleep(knobs.poll_interval_s)


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


def read_state(path: Path, tag: str) -> dict:
    """This run's persisted ids (upload file ids, job id); another tag's state is not this run's."""
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"tag": tag}
    return state if state.get("tag") == tag else {"tag": tag}


def write_state(path: Path, state: dict) -> None:
    io.write_json(state, path)  # atomic: a kill leaves the old state or the new one


def client_for(knobs, api_key: str):
    import openai

    return openai.OpenAI(api_key=api_key, base_url=knobs.base_url or None)


def require_key() -> str:
    return secrets.require(KEY_ENV, needed_by="train.backend openai")


def hosted_record(result: HostedResult, knobs) -> dict:
    return {
        "backend": "openai",
        "fine_tuned_model": result.fine_tuned_model,
        "job_id": result.job_id,
        "base_model": knobs.model,
        "trained_tokens": result.trained_tokens,
        "base_url": knobs.base_url or "https://api.openai.com/v1",
    }


BACKEND = OpenAIBackend()
