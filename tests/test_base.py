"""Stage base: tokenizer, tiny gpt-oss, warm-up, hub revision pinning, and the stage end to end.

Hermetic and CPU-only: a toy corpus from CPython's bundled docs, toy widths, a few warm-up steps.
"""

import dataclasses
import json
from pydoc_data.topics import topics
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from huggingface_hub.errors import OfflineModeIsEnabled

from stages import base, chat_template
from stages.params import as_dict, load_section
from stages.schema import CLEAN_DOCS, doc_id

TEXTS = list(topics.values())[:30]  # ~170 kB
SHA = "0123456789abcdef0123456789abcdef01234567"

# Toy widths: 32 wide, 512-token vocab, 15 steps of 4 x 32 tokens (seconds, not minutes).
SMALL = dict(
    model="tiny-gpt-oss",
    revision="main",
    vocab_size=512,
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    num_experts=4,
    experts_per_token=2,
    max_position_embeddings=256,
    warmup_steps=15,
    warmup_batch_size=4,
    warmup_seq_len=32,
    warmup_lr=0.003,
    seed=3407,
    threads=1,  # toy tensors gain nothing from a second thread, and a busy machine makes 2 threads crawl
)


@pytest.fixture(scope="module")
def params():
    return base.BaseParams(**SMALL)


@pytest.fixture(scope="module")
def tok():
    return base.train_tokenizer(TEXTS, vocab_size=512)


# --- tokenizer ---------------------------------------------------------------------------------


def test_the_six_specials_are_single_special_ids_in_a_fixed_order(tok):
    for i, token in enumerate(chat_template.SPECIAL_TOKENS):
        assert tok.encode(token, add_special_tokens=False) == [i]
    assert tok.eos_token == "<|return|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.chat_template == chat_template.CHAT_TEMPLATE
    assert len(tok) == 512


@pytest.mark.parametrize(
    "text", ["def f(x):\n\treturn x  # ok", " leading space, ünïcode, emoji 🐍, \r\n", ""]
)
def test_tokenizer_round_trips_text(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tokenizer_adds_no_bos_or_eos_on_its_own(tok):
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)


def test_tokenizer_training_is_deterministic(tok):
    again = base.train_tokenizer(TEXTS, vocab_size=512)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


# --- model -------------------------------------------------------------------------------------


def test_tiny_model_with_default_widths_has_under_a_million_params():
    defaults = load_section("base")  # the repo's params.yaml: also checks the section loads
    model = base.build_tiny_model(defaults, vocab_size=defaults.vocab_size)
    assert 500_000 < base.n_params(model) < 1_000_000  # 4096 x 64 x 2 embeddings = 524k of it
    assert model.config._attn_implementation == "eager"
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert model.config.rope_parameters["rope_type"] == "default"


def test_tiny_model_forward_pass_gives_logits_over_the_vocab(params):
    model = base.build_tiny_model(params, vocab_size=512)
    logits = model(input_ids=torch.arange(20).view(1, 20)).logits
    assert logits.shape == (1, 20, 512) and torch.isfinite(logits).all()


def test_tiny_model_init_is_seeded(params):
    a = base.build_tiny_model(params, vocab_size=512).state_dict()
    b = base.build_tiny_model(params, vocab_size=512).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- warm-up -----------------------------------------------------------------------------------


def test_warm_up_lowers_held_out_loss_and_is_deterministic(params, tok):
    lines = []
    runs = []
    for _ in range(2):
        model = base.build_tiny_model(params, vocab_size=len(tok))
        runs.append((base.warm_up(model, tok, TEXTS, params, progress=lines.append), model.state_dict()))
    (m1, sd1), (m2, sd2) = runs
    assert m1["final_eval_loss"] < m1["initial_eval_loss"] - 0.2  # 6.25 -> 5.85 measured
    assert m1["final_eval_loss"] == m2["final_eval_loss"] and m1["final_train_loss"] == m2["final_train_loss"]
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert m1["steps"] == 15 and m1["train_tokens"] == 15 * 4 * 32 and m1["n_params"] > 0
    assert any(line.startswith("step 15/15 loss") for line in lines)


def test_warm_up_blocks_join_documents_with_endoftext(tok):
    blocks = base.corpus_blocks(tok, ["a b c", "d e f"], seq_len=2)
    flat = blocks.flatten().tolist()
    assert tok.decode(flat, skip_special_tokens=False).startswith("a b c<|endoftext|>d e")


def test_warm_up_refuses_a_corpus_too_small_to_hold_out(params, tok):
    model = base.build_tiny_model(params, vocab_size=len(tok))
    with pytest.raises(ValueError, match="corpus too small"):
        base.warm_up(model, tok, ["tiny"], params, progress=None)


def test_warm_up_stops_on_a_non_finite_loss(params, tok):
    model = base.build_tiny_model(params, vocab_size=len(tok))
    with pytest.raises(ValueError, match="at step"):
        base.warm_up(model, tok, TEXTS, dataclasses.replace(params, warmup_lr=float("inf")), progress=None)

    poisoned = base.build_tiny_model(params, vocab_size=len(tok))
    with torch.no_grad():
        poisoned.lm_head.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="before warm-up"):
        base.warm_up(poisoned, tok, TEXTS, params, progress=None)


# --- hub revision ------------------------------------------------------------------------------


def test_resolve_revision_returns_the_hubs_commit_sha():
    calls = []

    def model_info(model_id, revision):
        calls.append((model_id, revision))
        return SimpleNamespace(sha=SHA)

    assert base.resolve_revision("org/model", "main", model_info=model_info) == SHA
    # a revision that is already a sha is still checked against the hub
    assert base.resolve_revision("org/model", SHA, model_info=model_info) == SHA
    assert calls == [("org/model", "main"), ("org/model", SHA)]


def test_resolve_revision_offline_says_which_model_and_how_to_fix():
    def offline(model_id, revision):
        raise OfflineModeIsEnabled("offline mode is enabled")

    with pytest.raises(base.BaseResolveError) as e:
        base.resolve_revision("org/model", "main", model_info=offline)
    message = str(e.value)
    assert "'org/model'" in message and "HF_HUB_OFFLINE" in message and "HF_TOKEN" in message
    assert "base.revision" in message and "already a sha" not in message

    with pytest.raises(base.BaseResolveError, match="already a sha, but it is still verified"):
        base.resolve_revision("org/model", SHA, model_info=offline)


def test_resolve_revision_rejects_a_sha_the_hub_does_not_confirm():
    with pytest.raises(base.BaseResolveError, match="different commit"):
        base.resolve_revision("org/model", SHA, model_info=lambda m, revision: SimpleNamespace(sha="f" * 40))
    with pytest.raises(base.BaseResolveError, match="no commit sha"):
        base.resolve_revision("org/model", "main", model_info=lambda m, revision: SimpleNamespace(sha=None))


# --- recipe hash and atomic output -------------------------------------------------------------


def test_recipe_hash_changes_with_params_and_corpus(params):
    h = base.recipe_sha256(params, base.texts_sha256(TEXTS))
    assert h == base.recipe_sha256(params, base.texts_sha256(list(TEXTS)))
    assert h != base.recipe_sha256(dataclasses.replace(params, seed=1), base.texts_sha256(TEXTS))
    assert h != base.recipe_sha256(params, base.texts_sha256(TEXTS[:-1]))
    assert base.texts_sha256(["ab", "c"]) != base.texts_sha256(["a", "bc"])


def test_atomic_dir_replaces_the_folder_only_on_success(tmp_path):
    out = tmp_path / "base"
    with base.atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), base.atomic_dir(out) as tmp:
        (tmp / "a").write_text("half-written")
        raise RuntimeError("killed")
    assert (out / "a").read_text() == "1"
    with base.atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp folders left behind


# --- the stage ---------------------------------------------------------------------------------


def write_corpus(path, texts):
    rows = [
        {
            "doc_id": doc_id("pydoc", f"pydoc://topics/{i}"),
            "source": "pydoc",
            "url": f"pydoc://topics/{i}",
            "fetched_at": "2026-01-01T00:00:00Z",
            "content_sha256": "0" * 64,
            "content_type": "text/plain",
            "title": f"topic {i}",
            "text": t,
            "record": None,
            "n_chars": len(t),
        }
        for i, t in enumerate(texts)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_DOCS), path)


def write_params(path, **base_params):
    path.write_text(yaml.safe_dump({"base": base_params}))


def test_main_builds_a_tiny_base_that_load_base_reloads_and_generates(tmp_path):
    corpus, params_file = tmp_path / "docs.parquet", tmp_path / "params.yaml"
    write_corpus(corpus, TEXTS[:10])
    write_params(params_file, **{**SMALL, "warmup_steps": 5})
    out, metrics_file = tmp_path / "models" / "base", tmp_path / "metrics" / "base.json"

    base.main(
        [
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--metrics",
            str(metrics_file),
            "--params",
            str(params_file),
        ]
    )

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert {"chat_template.jinja", "base.json"} <= files
    metrics = json.loads(metrics_file.read_text())
    assert metrics["steps"] == 5 and metrics["final_eval_loss"] < metrics["initial_eval_loss"]

    model, tok, info = base.load_base(out)
    params = base.BaseParams(**{**SMALL, "warmup_steps": 5})
    assert info["kind"] == "tiny" and info["model"] == "tiny-gpt-oss" and info["revision"] is None
    assert info["recipe_sha256"] == base.recipe_sha256(params, base.texts_sha256(TEXTS[:10]))
    assert as_dict(params)["warmup_steps"] == 5
    assert tok.chat_template == chat_template.CHAT_TEMPLATE
    assert base.load_tokenizer(out).backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()

    prompt = [{"role": "user", "content": "What is a decorator?"}]
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4


def hub_main_args(tmp_path):
    """(out folder, argv) for base.main with a hub model id in params."""
    params_file, out = tmp_path / "params.yaml", tmp_path / "base"
    write_params(params_file, **{**SMALL, "model": "org/model"})
    argv = ["--corpus", "unused.parquet", "--out", str(out), "--metrics", str(tmp_path / "m.json"),
            "--params", str(params_file)]
    return out, argv


def test_main_for_a_hub_model_records_the_commit_sha_without_downloading(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda self, model_id, revision: SimpleNamespace(sha=SHA)
    )
    out, argv = hub_main_args(tmp_path)
    base.main(argv)
    assert json.loads((out / "base.json").read_text()) == {
        "model": "org/model",
        "revision": SHA,
        "kind": "hub",
    }
    assert [p.name for p in out.iterdir()] == ["base.json"]


def test_main_for_an_unreachable_hub_model_exits_non_zero_and_writes_nothing(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(self, model_id, revision):
        raise OfflineModeIsEnabled("offline mode is enabled")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    out, argv = hub_main_args(tmp_path)
    with pytest.raises(SystemExit) as e:
        base.main(argv)
    assert e.value.code != 0 and "org/model" in str(e.value.code) and "HF_TOKEN" in str(e.value.code)
    assert not out.exists() and not (tmp_path / "m.json").exists()
