"""The embedded tiny base: tokenizer, tiny gpt-oss, warm-up, recipe hash, and the base folder it writes
(webtune.models.tiny, tiny_tokenizer, tiny_warmup and tiny_build: one base, tested as one).

Hermetic and CPU-only: a toy corpus from CPython's bundled docs, toy widths, a few warm-up steps. Reload
tests use the session's `tiny_base` (built once from SMALL and TEXTS); the few that build use 5 steps.
"""

import dataclasses
import json

import pytest
import torch

from tests.toys import SMALL, TEXTS
from webtune.errors import UserError
from webtune.formats import harmony
from webtune.models import load_base, load_tokenizer
from webtune.models.tiny import TinyParams, build_tiny_model, n_params
from webtune.models.tiny_build import build_tiny_base, recipe_sha256, texts_sha256
from webtune.models.tiny_tokenizer import train_tokenizer
from webtune.models.tiny_warmup import corpus_blocks, warm_up


@pytest.fixture(scope="module")
def params() -> TinyParams:
    return TinyParams(**SMALL)


# --- tokenizer ---------------------------------------------------------------------------------


def test_the_six_specials_are_single_special_ids_in_a_fixed_order(tok):
    for i, token in enumerate(harmony.SPECIAL_TOKENS):
        assert tok.encode(token, add_special_tokens=False) == [i]
    assert tok.eos_token == "<|return|>" and tok.pad_token == "<|endoftext|>" and tok.bos_token is None
    assert tok.chat_template == harmony.CHAT_TEMPLATE
    assert len(tok) == 512


@pytest.mark.parametrize(
    "text", ["def f(x):\n\treturn x  # ok", " leading space, ünïcode, emoji 🐍, \r\n", ""]
)
def test_tokenizer_round_trips_text(tok, text):
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_tokenizer_adds_no_bos_or_eos_on_its_own(tok):
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)


def test_tokenizer_training_is_deterministic_and_survives_the_save(tok):
    a, b = train_tokenizer(TEXTS, vocab_size=512), train_tokenizer(TEXTS, vocab_size=512)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.get_vocab() == tok.get_vocab()  # the base folder's tokenizer is this one, saved and reloaded


# --- model -------------------------------------------------------------------------------------


def test_tiny_model_with_default_widths_has_under_a_million_params(load):
    defaults = load("base").tiny  # the repo's params.yaml: also checks the section loads
    model = build_tiny_model(defaults, vocab_size=defaults.vocab_size)
    assert 500_000 < n_params(model) < 1_000_000  # 4096 x 64 x 2 embeddings = 524k of it
    assert model.config._attn_implementation == "eager"
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    assert model.config.rope_parameters["rope_type"] == "default"


def test_tiny_model_stops_on_return_and_endoftext_and_pads_with_endoftext(params):
    model = build_tiny_model(params, vocab_size=512)
    ids = {t: harmony.SPECIAL_TOKENS.index(t) for t in harmony.SPECIAL_TOKENS}
    assert model.config.eos_token_id == ids[harmony.RETURN] and model.config.bos_token_id is None
    assert model.config.pad_token_id == ids[harmony.ENDOFTEXT]
    assert model.generation_config.eos_token_id == [ids[harmony.RETURN], ids[harmony.ENDOFTEXT]]


def test_tiny_model_forward_pass_gives_logits_over_the_vocab(params):
    model = build_tiny_model(params, vocab_size=512)
    logits = model(input_ids=torch.arange(20).view(1, 20)).logits
    assert logits.shape == (1, 20, 512) and torch.isfinite(logits).all()


def test_tiny_model_init_is_seeded(params):
    a = build_tiny_model(params, vocab_size=512).state_dict()
    b = build_tiny_model(params, vocab_size=512).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_tiny_model(dataclasses.replace(params, seed=1), vocab_size=512).state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


# --- warm-up -----------------------------------------------------------------------------------


def test_warm_up_lowers_held_out_loss_and_is_deterministic(params, tok):
    lines = []
    runs = []
    for _ in range(2):
        model = build_tiny_model(params, vocab_size=len(tok))
        runs.append((warm_up(model, tok, TEXTS, params, progress=lines.append), model.state_dict()))
    (m1, sd1), (m2, sd2) = runs
    assert m1["final_eval_loss"] < m1["initial_eval_loss"] - 0.2  # 6.25 -> 5.85 measured
    assert m1["final_eval_loss"] == m2["final_eval_loss"] and m1["final_train_loss"] == m2["final_train_loss"]
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert m1["steps"] == 15 and m1["train_tokens"] == 15 * 4 * 32 and m1["n_params"] > 0
    assert any(line.startswith("step 15/15 loss") for line in lines)


def test_warm_up_blocks_join_documents_with_endoftext(tok):
    blocks = corpus_blocks(tok, ["a b c", "d e f"], seq_len=2)
    flat = blocks.flatten().tolist()
    assert tok.decode(flat, skip_special_tokens=False).startswith("a b c<|endoftext|>d e")
    assert blocks.shape[1] == 2


def test_warm_up_refuses_a_corpus_too_small_to_hold_out(params, tok):
    model = build_tiny_model(params, vocab_size=len(tok))
    with pytest.raises(UserError, match=r"warm-up corpus too small: \d+ tokens make [01] blocks of "
                                        r"base\.tiny\.warmup_seq_len 32; need at least 2"):
        warm_up(model, tok, ["tiny"], params, progress=None)


def test_warm_up_stops_on_a_non_finite_loss(params, tok):
    model = build_tiny_model(params, vocab_size=len(tok))
    pattern = r"warm-up loss is (nan|inf) at step \d+: lower base\.tiny\.warmup_lr"
    with pytest.raises(UserError, match=pattern):
        warm_up(model, tok, TEXTS, dataclasses.replace(params, warmup_lr=float("inf")), progress=None)

    poisoned = build_tiny_model(params, vocab_size=len(tok))
    with torch.no_grad():
        poisoned.lm_head.weight.fill_(float("nan"))
    with pytest.raises(UserError, match=r"warm-up loss is nan before warm-up \(held-out\)"):
        warm_up(poisoned, tok, TEXTS, params, progress=None)


# --- recipe hash -------------------------------------------------------------------------------


def test_recipe_hash_changes_with_params_and_corpus(params):
    h = recipe_sha256(params, texts_sha256(TEXTS))
    assert h == recipe_sha256(params, texts_sha256(list(TEXTS)))
    assert h != recipe_sha256(dataclasses.replace(params, seed=1), texts_sha256(TEXTS))
    assert h != recipe_sha256(params, texts_sha256(TEXTS[:-1]))
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])


# --- the base folder ---------------------------------------------------------------------------


def test_build_tiny_base_writes_a_tokenizer_folder_and_a_model_folder(tiny_base):
    tokenizer_dir, model_dir = tiny_base / "tokenizer", tiny_base / "model"
    assert sorted(p.name for p in tiny_base.iterdir()) == ["model", "tokenizer"]
    expected = {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_format.json"}
    assert expected <= {p.name for p in tokenizer_dir.iterdir()}
    assert {"model.safetensors", "config.json", "base.json"} <= {p.name for p in model_dir.iterdir()}
    assert json.loads((tokenizer_dir / "chat_format.json").read_text()) == {"chat_format": "harmony"}
    assert (tokenizer_dir / "chat_template.jinja").read_text() == harmony.CHAT_TEMPLATE
    # no leftovers of the atomic writes
    assert not [p for p in tiny_base.rglob(".*")]


def test_load_base_reloads_the_tiny_base_and_generates(tiny_base, params):
    base = load_base(tiny_base)
    assert base.info == {
        "model": "tiny-gpt-oss",
        "kind": "tiny",
        "revision": None,
        "recipe_sha256": recipe_sha256(params, texts_sha256(TEXTS)),
        "corpus_sha256": texts_sha256(TEXTS),
    }
    assert base.chat_format is harmony.FORMAT and base.chat_format.name == "harmony"
    context = params.max_position_embeddings
    assert base.tokenizer.model_max_length == context == base.model.config.max_position_embeddings
    assert base.tokenizer.chat_template == harmony.CHAT_TEMPLATE

    prompt = [{"role": "user", "content": "What is a decorator?"}]
    ids = base.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)
    generated = base.model.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape[1] == ids["input_ids"].shape[1] + 4


def test_load_base_without_the_model_loads_only_the_tokenizer(tiny_base):
    base = load_base(tiny_base, with_model=False)
    assert base.model is None and base.info["kind"] == "tiny"
    tokenizer, fmt = load_tokenizer(tiny_base / "tokenizer")
    assert fmt is harmony.FORMAT and tokenizer.get_vocab() == base.tokenizer.get_vocab()


def test_build_tiny_base_is_deterministic_and_returns_metrics_without_wall_clock(tmp_path, params):
    p, texts = dataclasses.replace(params, warmup_steps=5), TEXTS[:10]
    out = tmp_path / "base"
    first = build_tiny_base(p, texts, out, progress=None)
    weights = (out / "model" / "model.safetensors").read_bytes()
    tokenizer = (out / "tokenizer" / "tokenizer.json").read_bytes()
    again = build_tiny_base(p, texts, out, progress=None)  # a rebuild replaces the folder
    assert first == again
    assert (out / "model" / "model.safetensors").read_bytes() == weights
    assert (out / "tokenizer" / "tokenizer.json").read_bytes() == tokenizer
    assert first["steps"] == 5 and first["final_eval_loss"] < first["initial_eval_loss"]
    assert first["recipe_sha256"] == recipe_sha256(p, texts_sha256(texts))
    assert (first["vocab_size"], first["corpus_docs"]) == (512, 10)
    assert json.loads((out / "model" / "base.json").read_text()) == {
        k: first[k] for k in ("model", "kind", "revision", "recipe_sha256", "corpus_sha256")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_a_failed_build_writes_nothing(tmp_path, params):
    out = tmp_path / "base"
    with pytest.raises(UserError, match="warm-up corpus too small"):
        build_tiny_base(params, ["tiny"], out, progress=None)
    assert not out.exists()
