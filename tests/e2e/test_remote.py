"""S3 remote storage: `webtune.cli.remote` unit tests, then real `dvc` against a real S3 endpoint over HTTP.

The endpoint is moto's server (tests/e2e/s3_endpoint.py) behind a plug the tests can pull. A copy of the
built project (tests/e2e/conftest.py) carries state from test to test, in file order: commit A is pushed
and pulled back, commit B is added, a fresh clone brings A back, an object is corrupted, the endpoint
goes down mid-push, and at the end nothing the tests ran may have shown a credential.
"""

import hashlib
import os
import re
import secrets
import shutil
import sys
from pathlib import Path

import pytest

from tests.e2e.dvcproject import commit, copy_project, set_params, sh, sha256
from tests.e2e.s3_endpoint import S3Endpoint
from webtune.cli import remote

# --- use-s3: the dvc commands it runs --------------------------------------------------------------------


def test_use_s3_makes_a_verified_default_remote_and_keeps_the_profile_local():
    commands = remote.s3_remote_commands("s3://team-models/webtune", endpoint="https://minio.example.com:9000",
                                         region="eu-west-1", profile="ml")
    assert commands == [
        ["remote", "add", "--force", "s3", "s3://team-models/webtune"],
        ["remote", "modify", "s3", "verify", "true"],
        ["remote", "modify", "s3", "endpointurl", "https://minio.example.com:9000"],
        ["remote", "modify", "s3", "region", "eu-west-1"],
        ["remote", "modify", "--local", "s3", "profile", "ml"],
        ["remote", "default", "s3"],
    ]
    assert remote.s3_remote_commands("s3://abc")[-1] == ["remote", "default", "s3"]


@pytest.mark.parametrize("url", ["s3:/team/x", "gs://team/x", "s3://ab/x", "s3://Team/x", "team/x"])
def test_use_s3_refuses_what_is_not_an_s3_url(url):
    with pytest.raises(remote.RemoteError, match="is not an S3 URL"):
        remote.s3_remote_commands(url)


def test_use_s3_refuses_an_endpoint_with_credentials_in_it():
    with pytest.raises(remote.RemoteError, match="carries credentials"):
        remote.s3_remote_commands("s3://team/x", endpoint="https://AKIA123:hunter2@minio.example.com")
    with pytest.raises(remote.RemoteError, match="must be an http"):
        remote.s3_remote_commands("s3://team/x", endpoint="minio.example.com:9000")


def test_plain_http_is_flagged_unless_it_stays_on_this_machine():
    assert "unencrypted" in remote.plaintext_warning("http://minio.lan:9000")
    assert remote.plaintext_warning("http://127.0.0.1:9000") is None
    assert remote.plaintext_warning("https://minio.lan") is None


def test_repair_advice_lists_each_corrupted_object_and_its_folder_listing_once():
    root = "s3://team/x/files/md5"
    corrupted = [remote.Missing("models/adapter/a.safetensors", "ab12", f"{root}/ab/12", True,
                                f"{root}/dd/1.dir"),
                 remote.Missing("models/adapter/b.json", "cd34", f"{root}/cd/34", True, f"{root}/dd/1.dir"),
                 remote.Missing("data/raw/docs.parquet", "ef56", f"{root}/ef/56", True)]
    absent = remote.Missing("data/clean/docs.parquet", "0a0b", f"{root}/0a/0b", False)
    advice = remote.repair_advice([*corrupted, absent]).splitlines()
    assert advice[1:] == [f"  {root}/ab/12", f"  {root}/cd/34", f"  {root}/dd/1.dir", f"  {root}/ef/56"]
    assert remote.repair_advice([absent]) == ""  # nothing to delete: it only needs pushing
    assert "not on the remote" in absent.describe() and "corrupted on the remote" in corrupted[0].describe()


# --- end to end against S3 -------------------------------------------------------------------------------

BUCKET, PREFIX = "webtune-test", "runs"
# Credentials made up for this run: the leak check below searches for these exact strings.
KEY_ID = "AKIA" + secrets.token_hex(8).upper()
# A letter first: a secret starting with "-" would reach `dvc remote modify` as an option (1 run in 64).
SECRET = "s" + secrets.token_urlsafe(30)
ADAPTER = "models/adapter/adapter_model.safetensors"

outputs: list[str] = []  # stdout + stderr of every command below, for the leak check
state: dict = {}


def aws_env(keys: bool, credentials_file: str | None = None) -> dict:
    """The environment without any AWS setting of the machine running the tests, plus (or not) our keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env |= {"AWS_CONFIG_FILE": state["empty_file"],
            "AWS_SHARED_CREDENTIALS_FILE": credentials_file or state["empty_file"],
            "AWS_EC2_METADATA_DISABLED": "true",
            # botocore's retries against a dead endpoint: 2 attempts keep the failed push to seconds.
            "AWS_MAX_ATTEMPTS": "2"}
    return env | ({"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET} if keys else {})


def run(cwd: Path, *args: str, keys: bool = True, check: bool = True, credentials_file: str | None = None):
    proc = sh(cwd, *args, check=check, env=aws_env(keys, credentials_file))
    outputs.append(proc.stdout + proc.stderr)
    return proc


def dvc(cwd: Path, *args: str, **kw):
    return run(cwd, sys.executable, "-m", "dvc", *args, **kw)


def webtune_pull(cwd: Path, *args: str, **kw):
    return run(cwd, sys.executable, "-m", "webtune.cli.remote", "pull", *args, **kw)


def dvc_files(project: Path) -> dict[str, str]:
    """sha256 of every file DVC tracks under data/ and models/.

    Left out: git's README and .gitignore files, and train's models/checkpoints.lock (not an output).
    """
    tracked = (set(sh(project, "git", "ls-files", "data", "models").stdout.split())
               | {"models/checkpoints.lock"})
    return {str(p.relative_to(project)): sha256(p) for top in ("data", "models")
            for p in sorted((project / top).rglob("*"))
            if p.is_file() and str(p.relative_to(project)) not in tracked}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    empty = tmp_path_factory.mktemp("no-aws") / "empty"  # stands in for ~/.aws/config and credentials
    empty.touch()
    state["empty_file"] = str(empty)
    endpoint = S3Endpoint(BUCKET)
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="module")
def project(built, tmp_path_factory, s3) -> Path:
    """A copy of the built project (tests/e2e/conftest.py), its remote switched to S3."""
    project = copy_project(built, tmp_path_factory.mktemp("s3-project") / "project")
    state["use_s3"] = run(project, sys.executable, "-m", "webtune.cli.remote", "use-s3", f"s3://{BUCKET}/{PREFIX}",
                          "--endpoint", s3.url, "--region", "us-east-1")
    dvc(project, "repro")
    state["A"] = commit(project, "A")
    return project


@pytest.mark.slow
def test_use_s3_writes_plain_dvc_config(project, s3):
    assert "$ dvc remote default s3" in state["use_s3"].stdout
    config = (project / ".dvc/config").read_text()
    assert re.search(r"remote = s3\n", config)
    section = config.split("['remote \"s3\"']")[1]
    for line in (f"url = s3://{BUCKET}/{PREFIX}", f"endpointurl = {s3.url}", "verify = true",
                 "region = us-east-1"):
        assert line in section


@pytest.mark.slow
def test_push_then_pull_into_an_empty_cache_is_byte_identical(project, s3):
    before = dvc_files(project)
    assert (ADAPTER in before and "models/base/model/model.safetensors" in before
            and "data/format/train.parquet" in before)
    pushed = dvc(project, "push")
    state["a_objects"] = int(re.search(r"(\d+) files? pushed", pushed.stdout).group(1))
    assert len(s3.keys(PREFIX)) == state["a_objects"]

    shutil.rmtree(project / ".dvc/cache")
    for path in before:
        (project / path).unlink()
    pulled = dvc(project, "pull")
    assert f"{state['a_objects']} files fetched" in pulled.stdout
    assert dvc_files(project) == before
    state["a_adapter_md5"] = hashlib.md5((project / ADAPTER).read_bytes()).hexdigest()
    assert dvc(project, "status").stdout.strip().endswith("Data and pipelines are up to date.")
    state["a_files"] = before


@pytest.mark.slow
def test_a_past_model_comes_back_from_s3_in_a_fresh_clone(project, s3, tmp_path_factory):
    set_params(project, **{"train.max_steps": 6})  # B: another adapter, quickly
    dvc(project, "repro")
    state["B"] = commit(project, "B")
    state["b_files"] = dvc_files(project)
    assert state["b_files"][ADAPTER] != state["a_files"][ADAPTER]
    pushed = dvc(project, "push")
    # Only what B changed goes up: the data, the base and their objects are A's and already there.
    assert 0 < int(re.search(r"(\d+) files? pushed", pushed.stdout).group(1)) < state["a_objects"]

    clone = tmp_path_factory.mktemp("s3-clone") / "clone"
    sh(clone.parent, "git", "clone", "-q", str(project), str(clone))
    # A collaborator without AWS settings: no key, nothing pulled.
    refused = webtune_pull(clone, keys=False, check=False)
    assert refused.returncode != 0 and "credentials" in (refused.stdout + refused.stderr).lower()
    # Keys in the git-ignored config.local, not in the environment.
    dvc(clone, "remote", "modify", "--local", "s3", "access_key_id", KEY_ID, keys=False)
    dvc(clone, "remote", "modify", "--local", "s3", "secret_access_key", SECRET, keys=False)
    assert sh(clone, "git", "status", "--porcelain").stdout == ""  # config.local is ignored

    sh(clone, "git", "checkout", "-q", state["A"])
    dvc(clone, "pull", keys=False)  # DVC's own pull; `make pull`'s is used for B and below
    assert dvc_files(clone) == state["a_files"]  # A's adapter, base and data, byte for byte
    assert dvc(clone, "status", keys=False).stdout.strip().endswith("Data and pipelines are up to date.")
    sh(clone, "git", "checkout", "-q", "main")
    webtune_pull(clone, keys=False)
    assert dvc_files(clone) == state["b_files"]
    state["clone"] = clone


@pytest.mark.slow
def test_a_corrupted_object_is_named_and_the_workspace_keeps_its_files(project, s3):
    clone, md5 = state["clone"], state["a_adapter_md5"]  # the clone is at B, A and B in its cache
    key = f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"
    body = bytearray(s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one flipped byte: same size, wrong content
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))
    (clone / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).unlink()  # so A's adapter must come from S3

    sh(clone, "git", "checkout", "-q", state["A"])
    failed = webtune_pull(clone, keys=False, check=False)
    assert failed.returncode == 1
    assert f"{ADAPTER}\n    s3://{BUCKET}/{key}\n    corrupted on the remote" in failed.stderr
    assert dvc_files(clone) == state["b_files"]  # nothing checked out: B's files are all still there
    assert not (clone / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()  # and no bad copy was kept

    # The repair the message gives: delete the objects it lists (the file and its folder's listing), push
    # again from a cache that has good copies.
    advice = {line.strip() for line in failed.stderr.split("To repair:")[1].splitlines()[1:]}
    listing = advice - {f"s3://{BUCKET}/{key}"}
    assert len(advice) == 2 and len(listing) == 1 and listing.pop().endswith(".dir")
    for url in advice:
        s3.client.delete_object(Bucket=BUCKET, Key=url.removeprefix(f"s3://{BUCKET}/"))
    # --remote s3: with --all-commits DVC pushes each commit to that commit's own default remote, and the
    # project's first commits (before use-s3) name the local default.
    assert "2 files pushed" in dvc(project, "push", "--all-commits", "--remote", "s3").stdout
    webtune_pull(clone, keys=False)
    assert dvc_files(clone) == state["a_files"]


@pytest.mark.slow
def test_the_endpoint_going_down_mid_push_fails_clearly_and_the_retry_sends_only_the_rest(project, s3):
    for key in s3.keys(PREFIX):  # an empty remote: B's push has everything to send
        s3.client.delete_object(Bucket=BUCKET, Key=key)
    upload_bytes = sum((project / path).stat().st_size for path in state["b_files"])
    s3.plug.cut_after(int(0.4 * upload_bytes))
    failed = dvc(project, "push", check=False)
    s3.plug.plug_in()
    # DVC ends with "failed to push data to the cloud - N files failed to upload" (exit 1), or with
    # "unexpected error" (exit 255) when the cut hits a folder's .dir listing, uploaded after its files;
    # either way it names the endpoint and the object it could not send.
    assert failed.returncode != 0
    assert f'Could not connect to the endpoint URL: "{s3.url}/{BUCKET}/{PREFIX}/files/md5/' in failed.stderr
    arrived = len(s3.keys(PREFIX))

    pushed = dvc(project, "push")
    sent = int(re.search(r"(\d+) files? pushed", pushed.stdout).group(1))
    assert arrived > 0 and sent > 0
    assert arrived + sent == len(s3.keys(PREFIX))  # the retry sent only what had not arrived
    for key in s3.keys(PREFIX):  # and the cut left no partial object behind: each one hashes to its name
        body = s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert hashlib.md5(body).hexdigest() == "".join(key.split("/")[-2:]).removesuffix(".dir"), key
    assert "Cache and remote 's3' are in sync." in dvc(project, "status", "--cloud").stdout


@pytest.mark.slow
def test_an_aws_profile_is_enough(project, s3, tmp_path):
    credentials = tmp_path / "credentials"  # a ~/.aws/credentials with one profile, outside the repository
    credentials.write_text(f"[webtune-test]\naws_access_key_id = {KEY_ID}\n"
                           f"aws_secret_access_key = {SECRET}\n")
    run(project, sys.executable, "-m", "webtune.cli.remote", "use-s3", f"s3://{BUCKET}/{PREFIX}",
        "--endpoint", s3.url, "--region", "us-east-1", "--profile", "webtune-test", keys=False)
    assert "profile = webtune-test" in (project / ".dvc/config.local").read_text()
    assert "profile" not in (project / ".dvc/config").read_text()
    status = dvc(project, "status", "--cloud", keys=False, credentials_file=str(credentials))
    assert "Cache and remote 's3' are in sync." in status.stdout


@pytest.mark.slow
def test_no_credential_reaches_a_tracked_file_dvc_lock_or_any_output(project):
    clone = state["clone"]
    assert KEY_ID in (clone / ".dvc/config.local").read_text()  # the keys were used, and live only there
    secrets_ = (KEY_ID, SECRET)
    for repo in (project, clone):
        tracked = sh(repo, "git", "ls-files").stdout.split()
        assert "dvc.lock" in tracked and ".dvc/config" in tracked
        for rel in tracked:
            text = (repo / rel).read_bytes()
            assert not any(s.encode() in text for s in secrets_), rel
        history = sh(repo, "git", "log", "--all", "-p").stdout
        assert not any(s in history for s in secrets_)
    assert len(outputs) > 15  # every command of this file, the failed ones included
    for out in outputs:
        assert not any(s in out for s in secrets_)
