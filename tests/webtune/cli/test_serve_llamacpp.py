"""serve --engine llamacpp: a toy Llama + LoRA exported as GGUF, loaded by llama.cpp (llama-cpp-python),
answering the real openai client over real HTTP with webtune's prompts, stops and error shapes.

llama.cpp's tests are skipped, saying so, where the `llamacpp` extra is not installed (it compiles
llama.cpp: CI installs it, `make test` alone does not).
"""

import sys

import openai
import pytest
import torch

from tests.webtune.cli.conftest import serving
from tests.webtune.models.test_inference import make_adapter
from tests.webtune.models.test_to_gguf import llama_base
from webtune.cli import export as cli
from webtune.cli import serve
from webtune.models import llamacpp_chat as L
from webtune.models import load_tokenizer
from webtune.models.chat import Sampling

GREEDY = Sampling(max_new_tokens=12, temperature=0)
QUESTIONS = ["What does json.dumps do?", "Explain csv.reader", "How do I sort a list?"]


def needs_llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: "
                               "pip install 'webtune[llamacpp]' (CI installs it; it compiles llama.cpp)")


@pytest.fixture(scope="module")
def toy(tiny_base, tmp_path_factory):
    """(base, adapter, its f32 GGUF) of a toy Llama with the toy tokenizer."""
    root = tmp_path_factory.mktemp("llamacpp")
    base = llama_base(load_tokenizer(tiny_base / "tokenizer"), root / "base")
    adapter = make_adapter(base, root / "adapter", perturb=True)
    cli.export(base, adapter, root / "gguf", "float32", "gguf", "f32")
    return base, adapter, root / "gguf" / "model.gguf"


@pytest.fixture(scope="module")
def llama(toy):
    needs_llama_cpp()
    base, _, gguf = toy
    return L.LlamaCppChat.load(gguf, base, threads=2, context=512)


def conversation(question):
    return [{"role": "user", "content": question}]


def test_llama_cpp_answers_greedily_as_the_merged_model_does(toy, llama):
    base, adapter, _ = toy
    _, merged = cli.merged(base, adapter)
    stops = llama.stops
    for question in QUESTIONS:
        ids = torch.tensor([llama.conversation_ids(conversation(question))])
        hf = merged.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=stops,
                             pad_token_id=stops[0])[0, ids.shape[1]:].tolist()
        assert list(llama.tokens(conversation(question), GREEDY)) == hf, question


def test_serve_answers_the_openai_client_as_llama_cpp_alone_does(llama):
    expected = [llama.reply([conversation(q)], GREEDY)[0] for q in QUESTIONS]
    with serving(serve.create_app(llama, model_name="toy", max_batch=1)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for question, answer in zip(QUESTIONS, expected, strict=True):
            reply = client.chat.completions.create(model="toy", messages=conversation(question),
                                                   temperature=0, max_tokens=12)
            assert reply.choices[0].message.content == answer.text
            assert reply.choices[0].finish_reason == ("stop" if answer.stopped else "length")
            assert reply.usage.prompt_tokens == len(llama.conversation_ids(conversation(question)))
            chunks = list(client.chat.completions.create(model="toy", messages=conversation(question),
                                                         temperature=0, max_tokens=12, stream=True))
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer.text
        with pytest.raises(openai.BadRequestError, match="do not fit the model's 512-token context"):
            client.chat.completions.create(model="toy", messages=conversation("hi"), max_tokens=600)


def test_the_gguf_of_an_adapter_is_exported_once_and_then_found(toy, tmp_path, monkeypatch):
    base, adapter, _ = toy
    monkeypatch.chdir(tmp_path)
    first = L.gguf_for(base, adapter, "f16")
    assert first.is_file() and first.resolve().parent.parent == tmp_path / L.CACHE
    monkeypatch.setattr(cli, "export", lambda *a, **k: pytest.fail("exported twice"))
    assert L.gguf_for(base, adapter, "f16") == first


def test_a_k_quant_goes_through_llama_cpps_quantizer_and_answers(toy, tmp_path):
    needs_llama_cpp()
    from gguf import GGMLQuantizationType, GGUFReader

    base, adapter, _ = toy
    cli.export(base, adapter, tmp_path / "q4", "float32", "gguf", "q4_k_m")
    path = tmp_path / "q4" / "model.gguf"
    types = {t.tensor_type for t in GGUFReader(path).tensors}
    # the toy's 64-wide rows are no whole 256-value K-block: llama.cpp falls back to q5_0 / q8_0 for
    # them, as it does for such tensors of any model; what matters is that its quantizer wrote the file
    assert types & {GGMLQuantizationType.Q5_0, GGMLQuantizationType.Q4_K}
    assert GGMLQuantizationType.F16 not in types
    assert sorted(p.name for p in (tmp_path / "q4").iterdir()) == ["Modelfile", "README.md", "model.gguf"]
    chat = L.LlamaCppChat.load(path, base, threads=2, context=256)
    assert chat.reply([conversation("Hi")], GREEDY)[0].tokens > 0


def test_without_the_extra_the_llamacpp_engine_is_refused_in_one_line(toy, monkeypatch, capsys):
    base, _, gguf = toy
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--base", str(base), "--engine", "llamacpp", "--gguf", str(gguf)])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "serve: --engine llamacpp needs llama-cpp-python: pip install 'webtune[llamacpp]'")


def test_a_missing_or_unloadable_gguf_is_refused_in_one_line(toy, tmp_path, capsys):
    needs_llama_cpp()
    base, _, _ = toy
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    for name, says in (("none.gguf", "no such GGUF file"), ("junk.gguf", "llama.cpp cannot load it")):
        path, line = tmp_path / name, f"serve: {tmp_path / name}: {says}"
        with pytest.raises(SystemExit) as exit_:
            serve.main(["--base", str(base), "--engine", "llamacpp", "--gguf", str(path)])
        assert exit_.value.code == 1
        assert capsys.readouterr().err.strip().splitlines()[-1].startswith(line)
