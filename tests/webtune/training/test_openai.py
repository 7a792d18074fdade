"""The hosted backend (train.backend openai) against the OpenAI emulator over real HTTP, with the real
openai client: the JSONL rules, one job per run whatever is killed, and every failure in one line."""

import dataclasses
import datetime as dt
import json

import openai
import pytest

from tests.emulators.openai import Fault, OpenAIEmulator
from webtune import params as P
from webtune.training import Inputs, TrainError
from webtune.training.openai import BACKEND, STATE_FILE, HostedJob
from webtune.training.openai_api import check_jsonl

KEY = "sk-test-fake-0c9b2f"
TODAY = dt.date(2026, 12, 2)


def example(i: int) -> dict:
    return {"messages": [{"role": "system", "content": "You are an expert copywriter."},
                         {"role": "user", "content": f"Write a crisp product description. Title: P{i}"},
                         {"role": "assistant", "content": f"Product {i} is small, light and quiet."}]}


def write_jsonl(path, examples) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))


@pytest.fixture
def api():
    with OpenAIEmulator(key=KEY) as emulator:
        yield emulator


@pytest.fixture
def files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(12)])
    write_jsonl(tmp_path / "val.jsonl", [example(i) for i in range(100, 103)])
    return tmp_path


@pytest.fixture
def params(load):
    train = load("train")
    return P.replace(train, backend="openai", openai=dataclasses.replace(
        train.openai, poll_interval_s=5.0, poll_timeout_s=600.0))


class Clock:
    def __init__(self, stop_after: int | None = None):
        self.t, self.sleeps, self.stop_after = 0.0, 0, stop_after

    def sleep(self, s):
        self.sleeps += 1
        self.t += s
        if self.stop_after is not None and self.sleeps >= self.stop_after:
            raise KeyboardInterrupt  # the run is killed while it polls

    def clock(self):
        return self.t


def hosted_job(files, params, client, clock: Clock, lines=None) -> HostedJob:
    return HostedJob(params=params, train_jsonl=files / "train.jsonl", val_jsonl=files / "val.jsonl",
                     checkpoints=files / "checkpoints", live_dir=files / "live", client=client,
                     progress=(lines.append if lines is not None else lambda _: None), sleep=clock.sleep,
                     clock=clock.clock, today=TODAY)


def run(api, params, files, clock=None, lines=None):
    client = openai.OpenAI(api_key=KEY, base_url=f"{api.url}/v1")
    return BACKEND.fit(hosted_job(files, params, client, clock or Clock(), lines))


def test_a_job_is_created_once_polled_to_success_and_its_curve_read(api, params, files):
    lines = []
    result = run(api, params, files, lines=lines)
    assert result.model.startswith("ft:gpt-4o-mini-2024-07-18:emulated:webtune:")
    assert result.trained_tokens == 12345 and result.steps == 3 and result.val_loss == round(2.2 / 3, 4)
    assert result.curve == [{"step": s, "train_loss": round(2.0 / s, 4), "valid_loss": round(2.2 / s, 4)}
                            for s in (1, 2, 3)]
    (create,) = api.calls("POST", "/v1/fine_tuning/jobs")
    assert create.body["model"] == "gpt-4o-mini-2024-07-18" and create.body["suffix"] == "webtune"
    assert create.body["seed"] == params.seed and "webtune_run" in create.body["metadata"]
    assert create.body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"}}}
    assert [c.body["filename"] for c in api.calls("POST", "/v1/files")] == ["train.jsonl", "val.jsonl"]
    assert any("Step 1: training loss=2.000" in line for line in lines)
    state = json.loads((files / "checkpoints" / STATE_FILE).read_text())
    assert state["job_id"] == result.job_id and state["train_file"].startswith("file-")


def test_a_run_killed_while_polling_resumes_the_same_job(api, params, files):
    with pytest.raises(KeyboardInterrupt):
        run(api, params, files, clock=Clock(stop_after=1))
    result = run(api, params, files)
    assert len(api.calls("POST", "/v1/fine_tuning/jobs")) == 1 and len(api.calls("POST", "/v1/files")) == 2
    assert result.job_id == json.loads((files / "checkpoints" / STATE_FILE).read_text())["job_id"]


def test_without_its_state_file_a_rerun_finds_the_tagged_job_instead_of_creating_one(api, params, files):
    with pytest.raises(KeyboardInterrupt):
        run(api, params, files, clock=Clock(stop_after=1))
    (files / "checkpoints" / STATE_FILE).unlink()
    run(api, params, files)
    assert len(api.calls("POST", "/v1/fine_tuning/jobs")) == 1


@pytest.mark.parametrize(("script", "match"), [
    (["validating_files", "failed"],
     r"^fine-tuning job ftjob-\S+ failed \(invalid_training_file: emulated: the file is invalid\); nothing"),
    (["validating_files", "running", "cancelled"], r"^fine-tuning job ftjob-\S+ was cancelled"),
])
def test_failed_and_cancelled_jobs_end_in_one_line(api, params, files, script, match):
    api.job_script = script
    with pytest.raises(TrainError, match=match):
        run(api, params, files)


def test_a_403_on_create_means_not_eligible_and_is_never_retried(api, params, files):
    api.faults["POST /v1/fine_tuning/jobs"] = [Fault(403, "This organization is not eligible", "x")] * 3
    refused = (r"^OpenAI refused \(HTTP 403: This organization is not eligible\): this organisation is not "
               r"eligible .*no new jobs after 2027-01-06")
    with pytest.raises(TrainError, match=refused):
        run(api, params, files)
    assert len(api.calls("POST", "/v1/fine_tuning/jobs")) == 1


def test_a_429_with_retry_after_on_a_read_is_waited_out(api, params, files):
    api.faults["GET /v1/fine_tuning/jobs/{id}"] = [Fault(429, "slow down", retry_after_ms=20)]
    run(api, params, files)
    assert len(api.calls("GET", "/v1/fine_tuning/jobs/ftjob-")) >= 4  # the 429 and the polls after it


def test_a_429_on_create_is_not_retried_and_says_the_rerun_is_safe(api, params, files):
    api.faults["POST /v1/fine_tuning/jobs"] = [Fault(429, "too many", retry_after_ms=10)]
    with pytest.raises(TrainError, match=r"HTTP 429: too many\): no job was created; run again"):
        run(api, params, files)
    assert len(api.calls("POST", "/v1/fine_tuning/jobs")) == 1
    run(api, params, files)  # the uploads are reused from the state file
    assert len(api.calls("POST", "/v1/files")) == 2


def test_a_model_past_its_shutdown_date_is_refused_before_any_upload(api, params, files):
    api.models["gpt-4o-mini-2024-07-18"]["shutdown_date"] = "2026-11-30"
    with pytest.raises(TrainError, match=r"^train.openai.model gpt-4o-mini-2024-07-18 shut down on 2026-11"):
        run(api, params, files)
    assert api.calls("POST", "/v1/files") == []


def test_a_wrong_key_is_one_line(api, params, files):
    client = openai.OpenAI(api_key="sk-wrong", base_url=f"{api.url}/v1")
    with pytest.raises(TrainError, match=r"^OpenAI refused the key \(HTTP 401: .*check OPENAI_API_KEY"):
        BACKEND.fit(hosted_job(files, params, client, Clock()))


def test_the_job_writes_what_the_host_trains_and_needs_the_jsonl_folder(params, files):
    inputs = Inputs(base_dir=files / "no-base", train_path=files / "unused", val_path=files / "unused",
                    jsonl_dir=files, checkpoints=files / "checkpoints", mask_report=files / "mask.md",
                    live_dir=files / "live", max_length=512, api_key=KEY)
    job = BACKEND.job(params, inputs, lambda _: None)
    assert (job.train_jsonl, job.val_jsonl, job.checkpoints) == (files / "train.jsonl", files / "val.jsonl",
                                                                 files / "checkpoints")
    assert (files / "mask.md").read_text() == (
        f"# train: what is supervised\n\nBackend openai: the host trains every assistant message of "
        f"{files / 'train.jsonl'} (weight 1; the format stage writes no weight 0). The local mask report "
        "applies to the local backends.\n")
    with pytest.raises(TrainError, match=r"^train.backend openai needs --openai-dir \(format's JSONL\)$"):
        BACKEND.job(params, dataclasses.replace(inputs, jsonl_dir=None), lambda _: None)


def line(*messages: dict) -> str:
    return json.dumps({"messages": list(messages)})


Q, A = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(("text", "problem"), [
    ("{not json", r":3: not JSON"),
    (line({"role": "robot", "content": "x"}), r":3: messages\[0\] has role 'robot'"),
    (line({"role": "user", "content": " "}, A), r":3: messages\[0\] \(user\) has empty or missing content"),
    (line(Q), r":3: no assistant message"),
    (line(Q | {"weight": 1}, A), r":3: messages\[0\]: weight is 0 or 1, on assistant messages only"),
    (line(Q, A | {"weight": 2}), r":3: messages\[1\]: weight is 0 or 1"),
    (line(Q | {"tool": 1}, A), r":3: messages\[0\] has unsupported keys \['tool'\]"),
    (line({"role": "user", "content": "q" * 400}, A), r":3: ~1\d\d tokens, over the model's 100 per example"),
])
def test_a_jsonl_line_that_breaks_the_apis_rules_is_refused_with_its_number(tmp_path, text, problem):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([json.dumps(example(0)), json.dumps(example(1)), text]) + "\n")
    with pytest.raises(TrainError, match=problem):
        check_jsonl(path, max_example_tokens=100, min_examples=1)


def test_fewer_than_ten_examples_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(9)])
    with pytest.raises(TrainError, match=r"9 examples; the API needs at least 10"):
        check_jsonl(tmp_path / "train.jsonl", max_example_tokens=65536, min_examples=10)
    write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(10)])
    assert check_jsonl(tmp_path / "train.jsonl", max_example_tokens=65536, min_examples=10) == 10
