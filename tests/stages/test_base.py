"""base, the stage: a tiny base built from its packaged corpus, a hub base pinned without downloading
weights, and an unreachable hub. The packaged default, the tokenizer, model, warm-up and revision units
are in tests/webtune/models/."""

import json
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub.errors import OfflineModeIsEnabled

from stages import base
from tests.toys import SMALL
from webtune.formats import harmony
from webtune.models import load_base
from webtune.models.tiny import TinyParams
from webtune.models.tiny_build import recipe_sha256, texts_sha256
from webtune.models.tiny_tokenizer import warmup_corpus

SHA = "0123456789abcdef0123456789abcdef01234567"
WALL_CLOCK_KEYS = ("seconds", "tokens_per_s", "tokenizer_seconds")


def write_params(path, model="tiny-gpt-oss", **tiny):
    path.write_text(yaml.safe_dump({"base": {"model": model, "revision": "main", "tiny": {**SMALL, **tiny}}}))


def test_main_builds_a_tiny_base_that_load_base_reloads_and_generates(tmp_path):
    params_file = tmp_path / "params.yaml"
    write_params(params_file, warmup_steps=5)
    out, metrics_file = tmp_path / "models" / "base", tmp_path / "metrics" / "base.json"

    base.main(["--out", str(out), "--metrics", str(metrics_file), "--params", str(params_file)])

    assert sorted(p.name for p in out.iterdir()) == ["model", "tokenizer"]
    tokenizer_files = {p.name for p in (out / "tokenizer").iterdir()}
    expected = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_format.json"}
    assert expected <= tokenizer_files
    assert json.loads((out / "tokenizer" / "chat_format.json").read_text()) == {"chat_format": "harmony"}
    model_files = {p.name for p in (out / "model").iterdir()}
    assert {"model.safetensors", "config.json", "base.json"} <= model_files
    assert not model_files & tokenizer_files, "model/ and tokenizer/ are separate outputs"
    assert sorted(p.name for p in out.parent.iterdir()) == ["base"], "a temporary folder was left behind"

    metrics = json.loads(metrics_file.read_text())
    assert metrics["steps"] == 5 and metrics["final_eval_loss"] < metrics["initial_eval_loss"]
    assert not set(WALL_CLOCK_KEYS) & set(metrics), "a wall-clock number makes every re-run a change"
    assert not [k for k in metrics if "second" in k or "per_s" in k]

    loaded = load_base(out)
    params = TinyParams(**{**SMALL, "warmup_steps": 5})
    info = loaded.info
    assert info["kind"] == "tiny" and info["model"] == "tiny-gpt-oss" and info["revision"] is None
    # the packaged corpus, whatever was scraped: CPython's bundled language reference
    assert metrics["corpus_docs"] == len(warmup_corpus()) > 50
    assert info["recipe_sha256"] == recipe_sha256(params, texts_sha256(warmup_corpus()))
    assert info["recipe_sha256"] == metrics["recipe_sha256"]
    assert loaded.chat_format is harmony.FORMAT
    tok = loaded.tokenizer
    assert tok.chat_template == harmony.CHAT_TEMPLATE
    assert tok.model_max_length == SMALL["max_position_embeddings"]  # what format checks max_length against

    prompt = [{"role": "user", "content": "What is a decorator?"}]
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = loaded.model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4


def hub_main_args(tmp_path):
    """(out folder, argv) for base.main with a hub model id in params."""
    params_file, out = tmp_path / "params.yaml", tmp_path / "base"
    write_params(params_file, model="org/model")
    argv = ["--out", str(out), "--metrics", str(tmp_path / "m.json"), "--params", str(params_file)]
    return out, argv


def test_main_for_a_hub_model_records_the_commit_sha_without_downloading(tmp_path, monkeypatch, tok):
    import huggingface_hub

    import webtune.models.hub

    calls = []

    def model_info(self, model_id, revision):
        calls.append((model_id, revision))
        return SimpleNamespace(sha=SHA)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(webtune.models.hub, "hub_tokenizer", lambda model_id, sha: tok)
    out, argv = hub_main_args(tmp_path)
    base.main(argv)
    assert calls == [("org/model", "main")]
    assert json.loads((out / "model" / "base.json").read_text()) == {
        "model": "org/model",
        "kind": "hub",
        "revision": SHA,
    }
    assert [p.name for p in (out / "model").iterdir()] == ["base.json"]  # no weights: train loads that commit
    assert json.loads((out / "tokenizer" / "chat_format.json").read_text()) == {"chat_format": "harmony"}
    assert json.loads((tmp_path / "m.json").read_text()) == {
        "model": "org/model", "kind": "hub", "revision": SHA, "chat_format": "harmony"}
    loaded = load_base(out, with_model=False)
    assert loaded.chat_format is harmony.FORMAT and loaded.info["revision"] == SHA


def test_main_for_an_unreachable_hub_model_exits_1_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(self, model_id, revision):
        raise OfflineModeIsEnabled("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    out, argv = hub_main_args(tmp_path)
    with pytest.raises(SystemExit) as e:
        base.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert err.startswith("base: cannot resolve base model 'org/model' at revision 'main' on the "
                          "Hugging Face Hub (OfflineModeIsEnabled: offline mode is enabled). To fix:")
    assert "HF_TOKEN" in err and "HF_HUB_OFFLINE" in err
    assert not out.exists() and not (tmp_path / "m.json").exists()


# The hub's and transformers' own messages span several lines; the stage's error is still one.
HUB_404 = ("404 Client Error. (Request ID: Root=1-abc)\n\nRepository Not Found for url: "
           "https://huggingface.co/api/models/org/model/revision/main.\nPlease make sure you specified "
           "the correct `repo_id` and `repo_type`.")


def test_a_multi_line_hub_error_is_reported_on_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def missing(self, model_id, revision):
        raise OSError(HUB_404)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", missing)
    out, argv = hub_main_args(tmp_path)
    with pytest.raises(SystemExit) as e:
        base.main(argv)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert " ".join(HUB_404.split()) in err and "HF_TOKEN" in err
    assert not out.exists()


def test_a_tokenizer_the_hub_cannot_give_is_one_line_naming_model_and_commit(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    import transformers

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\n"
                      "Check your internet connection.")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, model_id, revision: SimpleNamespace(sha=SHA))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", unreachable)
    out, argv = hub_main_args(tmp_path)
    with pytest.raises(SystemExit) as e:
        base.main(argv)
    assert e.value.code == 1
    assert capsys.readouterr().err == (
        f"base: cannot load the tokenizer of 'org/model' at {SHA}: We couldn't connect to "
        "'https://huggingface.co' to load the files. Check your internet connection.\n")
    assert not out.exists() and not (tmp_path / "m.json").exists()
