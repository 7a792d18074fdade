"""A hub base: the revision pinned to a commit sha, its tokenizer checked against the known chat formats.

Nothing touches the network: the hub's model_info and the tokenizer download are injected.
"""

import json
from types import SimpleNamespace

import pytest
from huggingface_hub.errors import OfflineModeIsEnabled

from tests.toys import plain_tokenizer
from webtune.formats import harmony
from webtune.models import ModelError, load_base
from webtune.models.hub import BaseResolveError, resolve_revision, save_hub_base

SHA = "0123456789abcdef0123456789abcdef01234567"


def hub(sha=SHA):
    return lambda model_id, revision: SimpleNamespace(sha=sha)


def offline(model_id, revision):
    raise OfflineModeIsEnabled("offline mode is enabled")


# --- resolve_revision --------------------------------------------------------------------------


def test_resolve_revision_returns_the_hubs_commit_sha():
    calls = []

    def model_info(model_id, revision):
        calls.append((model_id, revision))
        return SimpleNamespace(sha=SHA)

    assert resolve_revision("org/model", "main", model_info=model_info) == SHA
    # a revision that is already a sha is still checked against the hub
    assert resolve_revision("org/model", SHA, model_info=model_info) == SHA
    assert calls == [("org/model", "main"), ("org/model", SHA)]


def test_resolve_revision_offline_says_which_model_and_how_to_fix():
    with pytest.raises(BaseResolveError) as e:
        resolve_revision("org/model", "main", model_info=offline)
    message = str(e.value)
    assert "'org/model'" in message and "HF_HUB_OFFLINE" in message and "HF_TOKEN" in message
    assert "base.revision" in message and "already a sha" not in message
    assert message.endswith("Offline, use base.model: tiny-gpt-oss.")

    with pytest.raises(BaseResolveError, match="already a sha, but it is still verified"):
        resolve_revision("org/model", SHA, model_info=offline)


def test_resolve_revision_rejects_a_sha_the_hub_does_not_confirm():
    with pytest.raises(BaseResolveError, match="different commit"):
        resolve_revision("org/model", SHA, model_info=hub("f" * 40))
    with pytest.raises(BaseResolveError, match="no commit sha"):
        resolve_revision("org/model", "main", model_info=hub(None))


def test_a_resolve_error_is_a_model_error_so_the_stage_reports_it_in_one_line():
    with pytest.raises(ModelError):
        resolve_revision("org/model", "main", model_info=offline)


# --- save_hub_base -----------------------------------------------------------------------------


def test_save_hub_base_pins_the_commit_and_saves_the_tokenizer_with_its_format(tmp_path, tok):
    loaded = []

    def load_tokenizer(model_id, sha):
        loaded.append((model_id, sha))
        return tok

    out = tmp_path / "base"
    info = save_hub_base("org/model", "main", out, model_info=hub(), load_tokenizer=load_tokenizer)
    assert loaded == [("org/model", SHA)]  # the tokenizer of the pinned commit, not of "main"
    assert info == {"model": "org/model", "kind": "hub", "revision": SHA, "chat_format": "harmony"}
    assert json.loads((out / "model" / "base.json").read_text()) == {
        "model": "org/model", "kind": "hub", "revision": SHA}
    assert [p.name for p in (out / "model").iterdir()] == ["base.json"]  # no weights: train loads the hub's
    assert json.loads((out / "tokenizer" / "chat_format.json").read_text()) == {"chat_format": "harmony"}
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in (out / "tokenizer").iterdir()}

    base = load_base(out, with_model=False)  # what format reads back
    assert base.info["kind"] == "hub" and base.chat_format is harmony.FORMAT
    assert base.tokenizer.get_vocab() == tok.get_vocab()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp folders left behind


def test_save_hub_base_refuses_a_tokenizer_that_fits_no_chat_format_and_writes_nothing(tmp_path):
    out = tmp_path / "base"
    with pytest.raises(ModelError) as e:
        save_hub_base("org/plain-model", "main", out, model_info=hub(),
                      load_tokenizer=lambda model_id, sha: plain_tokenizer())
    message = str(e.value)
    assert message.startswith(f"org/plain-model at {SHA[:12]}: ")
    assert "fits no known chat format (known: harmony, chatml, llama3)" in message
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_save_hub_base_offline_writes_nothing_and_downloads_nothing(tmp_path):
    def load_tokenizer(model_id, sha):
        raise AssertionError("the tokenizer must not be fetched before the revision resolves")

    with pytest.raises(BaseResolveError, match="HF_TOKEN"):
        save_hub_base("org/model", "main", tmp_path / "base", model_info=offline,
                      load_tokenizer=load_tokenizer)
    assert list(tmp_path.iterdir()) == []
