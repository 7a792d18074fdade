"""Backend `openai`: a supervised fine-tune through the OpenAI API of the format stage's JSONL.

    train.backend: openai      # knobs: train.openai; key: OPENAI_API_KEY (environment or .env)

check the JSONL -> upload train and val -> create the job -> poll it, with its events as progress -> the
adapter folder names the `ft:` model. Nothing is loaded here: the base is the host's model. Before
anything is sent the files are checked against the API's rules (webtune.training.openai_api: >= 10
examples; roles; non-empty content; an assistant turn; `weight` only 0/1 and only on assistant messages;
the model's per-example token limit), failing with the line number; the model's shutdown date is checked
too.

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
draw, so `dvc plots` shows it. The mask report says what the host trains.
"""

import dataclasses
import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webtune import io, secrets
from webtune.models import HOSTED_FILE, KEY_ENV, OPENAI_URL
from webtune.params import api_url, at_least, between, knob, positive
from webtune.training import Backend, Fitted, Inputs, TrainError
from webtune.training.openai_api import MIN_EXAMPLES, Api, check_jsonl, check_model, client_for, result_curve


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

STATE_FILE = "openai-job.json"  # in the checkpoints folder: this run's file ids and job id


@dataclass
class HostedJob:
    """What the hosted backend fits: the format stage's JSONL, the client, and where the job's ids live."""

    params: Any  # webtune.params.TrainParams
    train_jsonl: Path
    val_jsonl: Path  # empty or missing: no validation file
    checkpoints: Path  # the persistent folder holding STATE_FILE
    live_dir: Path  # dvclive folder: the job's loss curve
    client: Any  # openai.OpenAI
    progress: Callable[[str], None]
    sleep: Callable[[float], None] = time.sleep  # between polls
    clock: Callable[[], float] = time.monotonic  # for train.openai.poll_timeout_s
    today: dt.date | None = None  # the shutdown-date check's day; None: today (UTC)


@dataclass
class HostedFitted(Fitted):
    """Fitted for a hosted job: `model` is the `ft:` model id, `steps` and the losses the curve's last."""

    job_id: str = ""
    trained_tokens: int | None = None  # as the API reports it (None when it does not)
    curve: list[dict] = field(default_factory=list)  # {"step", "train_loss"?, "valid_loss"?} per step


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


def read_state(path: Path, tag: str) -> dict:
    """This run's persisted ids (upload file ids, job id); another tag's state is not this run's."""
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"tag": tag}
    return state if state.get("tag") == tag else {"tag": tag}


def write_state(path: Path, state: dict) -> None:
    io.write_json(state, path)  # atomic: a kill leaves the old state or the new one


class OpenAIBackend(Backend):
    name = "openai"

    def secret(self) -> str:
        return secrets.require(KEY_ENV, needed_by=f"train.backend {self.name}")

    def job(self, params, inputs: Inputs, progress: Callable[[str], None]) -> HostedJob:
        if inputs.jsonl_dir is None:
            raise TrainError(f"train.backend {self.name} needs --openai-dir (format's JSONL)")
        train_jsonl = inputs.jsonl_dir / "train.jsonl"
        # The host tokenizes and masks on its own: there are no local tokens to gate, only this to say.
        io.write_text(f"# train: what is supervised\n\nBackend {self.name}: the host trains every assistant "
                      f"message of {train_jsonl} (weight 1; the format stage writes no weight 0). "
                      "The local mask report applies to the local backends.\n", inputs.mask_report)
        return HostedJob(params=params, train_jsonl=train_jsonl, val_jsonl=inputs.jsonl_dir / "val.jsonl",
                         checkpoints=inputs.checkpoints, live_dir=inputs.live_dir,
                         client=client_for(params.openai, inputs.api_key), progress=progress)

    def fit(self, job: HostedJob) -> HostedFitted:
        """The job for these files and knobs (created once, found again after a kill), polled to its end;
        its loss curve becomes the dvclive curve."""
        knobs, client = job.params.openai, job.client
        api = Api(client, knobs.model)
        job_id = self.create_or_resume(job, api)
        fitted = self.poll(api, client, job_id, knobs, job.progress, job.sleep, job.clock)
        write_curve(fitted.curve, job.live_dir)
        job.progress(f"train: {fitted.model} ({fitted.trained_tokens or 0:,} trained tokens)")
        return fitted

    def create_or_resume(self, job: HostedJob, api: Api) -> str:
        """The job id of this run: from the state file, else the job tagged with this run, else a new job
        (uploads and create each recorded the moment their id exists)."""
        params, client, progress = job.params, job.client, job.progress
        knobs = params.openai
        train_jsonl, val_jsonl = job.train_jsonl, job.val_jsonl
        check_model(client, knobs.model, job.today or dt.datetime.now(dt.UTC).date())
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
        state_path = job.checkpoints / STATE_FILE
        state = read_state(state_path, tag)
        once = client.with_options(max_retries=0)  # creating calls: never retried automatically

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
            created = api.call(
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
            state["job_id"] = created.id
            write_state(state_path, state)  # before the first poll
            progress(f"train: created job {created.id} on {knobs.model} (tag {tag}); a re-run resumes it")
        return state["job_id"]

    def poll(self, api, client, job_id: str, knobs, progress, sleep, clock) -> HostedFitted:
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
                curve = result_curve(api, client, job) or events_curve
                last = curve[-1] if curve else {}
                return HostedFitted(model=job.fine_tuned_model, steps=last.get("step", 0),
                                    train_loss=last.get("train_loss"), val_loss=last.get("valid_loss"),
                                    tokens_seen=job.trained_tokens or 0, train_seconds=0.0,
                                    device="hosted", precision="hosted", job_id=job_id,
                                    trained_tokens=job.trained_tokens, curve=curve)
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

    def metrics(self, job: HostedJob, fitted: HostedFitted) -> dict:
        return {"backend": self.name, "fine_tuned_model": fitted.model, "job_id": fitted.job_id,
                "trained_tokens": fitted.trained_tokens, "steps": fitted.steps,
                "train_loss": fitted.train_loss, "val_loss": fitted.val_loss, "device": fitted.device}

    def save(self, job: HostedJob, fitted: HostedFitted, metrics: dict, folder: Path) -> None:
        """hosted.json names the model (what evaluate and chat --hosted read); README.md is its card."""
        knobs = job.params.openai
        (folder / HOSTED_FILE).write_text(json.dumps(hosted_record(fitted, knobs), indent=2, sort_keys=True)
                                          + "\n")
        (folder / "README.md").write_text(
            f"# {fitted.model}\n\nA hosted fine-tune of {knobs.model} ({self.name}), "
            f"job {fitted.job_id}, {fitted.trained_tokens or 0:,} trained tokens. Chat with it:\n\n"
            f"    python -m webtune.cli.chat --hosted {fitted.model}\n\n"
            f"```json\n{json.dumps(metrics, indent=2, sort_keys=True)}\n```\n")


def hosted_record(fitted: HostedFitted, knobs) -> dict:
    """hosted.json: the model, its job, its base model and the endpoint that serves it."""
    return {
        "backend": "openai",
        "fine_tuned_model": fitted.model,
        "job_id": fitted.job_id,
        "base_model": knobs.model,
        "trained_tokens": fitted.trained_tokens,
        "base_url": knobs.base_url or OPENAI_URL,
    }


def write_curve(curve: list[dict], live_dir: Path) -> None:
    """The job's loss curve as the dvclive curve the local backends draw (train/loss, eval/loss)."""
    from dvclive import Live

    live = Live(dir=str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None)
    for point in curve:
        live.step = point["step"]
        for key, name in (("train_loss", "train/loss"), ("valid_loss", "eval/loss")):
            if key in point:
                live.log_metric(name, point[key])
    live.make_summary()


BACKEND = OpenAIBackend()
