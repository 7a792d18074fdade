"""A merged model as one GGUF file (llama.cpp, llama-server, Ollama): weights, tokenizer, chat template,
stop tokens.

    path = write_gguf(model, tokenizer, chat_format, "exports/model.gguf", quant="q8_0", name="...")

Written with the `gguf` package's own tables and writer (TensorNameMap for tensor names, GGUFWriter,
SpecialVocab for merges and special ids, gguf.quants for the types it can quantize in numpy). Supported:
decoder-only Llama-architecture models with a byte-level BPE tokenizer (SmolLM2, Llama 3, and what
shares their layout); another architecture or tokenizer is refused in one line naming it.

Quant types: f32 (exact), f16, bf16, q8_0 (gguf.quants) and llama.cpp's K-quants (q4_k_m ...), which
need its quantizer: the file is written in f16 first, then `llama_cpp.llama_model_quantize` converts it
(`pip install 'webtune[llamacpp]'`). As llama.cpp's converter does, norms stay f32 and a tensor whose
rows are not a whole number of quant blocks falls back to f16.
"""

import ctypes
import json
import tempfile
from pathlib import Path

import numpy as np

from webtune import io
from webtune.errors import UserError

# transformers class -> (GGUF architecture, whether q/k rows are permuted for llama.cpp's RoPE)
ARCHITECTURES = {"LlamaForCausalLM": ("llama", True), "Qwen2ForCausalLM": ("qwen2", False)}
NUMPY_QUANTS = ("f32", "f16", "bf16", "q8_0")
LLAMA_CPP_QUANTS = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_m": 12, "q4_k_s": 14,
                    "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}  # llama_ftype values
QUANTS = NUMPY_QUANTS + tuple(LLAMA_CPP_QUANTS)
# tokenizer.ggml.pre: which pre-tokenizer regex llama.cpp applies. It cannot be read off a tokenizer.json
# (llama.cpp's converter recognises it by hashing sample encodings), so it is named per model family.
PRE_TOKENIZERS = {"smollm2": "smollm", "huggingfacetb/smollm": "smollm", "meta-llama/llama-3": "llama-bpe",
                  "meta-llama/meta-llama-3": "llama-bpe", "qwen/qwen2": "qwen2"}


class GGUFError(UserError):
    """The model cannot be written as GGUF as asked."""


def pre_tokenizer(base_model: str | None) -> str | None:
    name = (base_model or "").lower()
    return next((pre for prefix, pre in PRE_TOKENIZERS.items() if name.startswith(prefix)), None)


def _check(model, tokenizer, quant: str) -> str:
    arch = (model.config.architectures or [type(model).__name__])[0]
    if arch not in ARCHITECTURES:
        raise GGUFError(f"the {arch} architecture cannot be exported as GGUF yet "
                        f"(supported: {', '.join(ARCHITECTURES)})")
    if quant not in QUANTS:
        raise GGUFError(f"--quant {quant!r}: one of {', '.join(QUANTS)}")
    if _rope(model.config).get("rope_type", "default") not in ("default", "llama3"):
        raise GGUFError(f"rope scaling {_rope(model.config)['rope_type']!r} cannot be exported as GGUF yet "
                        "(supported: none, llama3)")
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "BPE" or "ByteLevel" not in json.dumps(state.get("pre_tokenizer")):
        raise GGUFError(f"a {state['model']['type']} tokenizer without byte-level pre-tokenization cannot "
                        "be exported as GGUF yet (supported: byte-level BPE, as SmolLM2 and Llama 3 use)")
    return arch


def _rope(config) -> dict:
    """RoPE's settings whichever way the config spells them (rope_parameters in transformers 5)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return rope


def llama3_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """Llama 3.1's RoPE scaling as llama.cpp reads it (`rope_freqs.weight`): per rotary frequency, what
    its wavelength is divided by. Long wavelengths (past the original context) are scaled by `factor`,
    short ones kept, those between interpolated smoothly (the rule Meta published with Llama 3.1)."""
    freqs = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / freqs
    old, low, high = (rope["original_max_position_embeddings"], rope["low_freq_factor"],
                      rope["high_freq_factor"])
    smooth = (old / wavelen - low) / (high - low)
    factors = np.where(wavelen < old / high, 1.0,
                       np.where(wavelen > old / low, rope["factor"],
                                1 / ((1 - smooth) / rope["factor"] + smooth)))
    return factors.astype(np.float32)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's q/k rows are ordered for its rotate-half RoPE; llama.cpp's kernels expect each head's rotary
    pairs interleaved, so the rows of every head are reordered (transformers' GGUF loader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(model, arch: str):
    """(GGUF name, float32 array) of every weight, in the model's order (rope factors first)."""
    import gguf

    config = model.config
    gguf_arch, permute = ARCHITECTURES[arch]
    names = gguf.TensorNameMap(gguf.MODEL_ARCH[gguf_arch.upper()], config.num_hidden_layers)
    rope = _rope(config)
    if rope.get("rope_type") == "llama3":
        yield (gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
               llama3_rope_factors(rope, _head_dim(config)))
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reads a missing output.weight as tied to token_embd
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GGUFError(f"no GGUF name for the {arch} tensor {key}")
        data = tensor.detach().float().numpy()
        if permute and key.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif permute and key.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads)
        yield name, data


def _quantized(name: str, data: np.ndarray, quant: str):
    """(array to write, its GGML type): norms and 1-D tensors in f32, others in `quant`."""
    import gguf

    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
    if data.ndim == 1 or quant == "f32":
        return data, types["f32"]
    if quant == "f16":
        return data.astype(np.float16), types["f16"]
    try:
        return gguf.quants.quantize(data, types[quant]), types[quant]
    except gguf.QuantError:  # rows not a whole number of blocks (llama.cpp's converter does the same)
        return data.astype(np.float16), types["f16"]


def _file_type(quant: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]


def _vocab(writer, tokenizer, chat_format, n_vocab: int, pre: str) -> None:
    import gguf

    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    tokens, types = [], []
    for i, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(n_vocab)))):
        if token is None:  # the model's embedding is padded past the tokenizer's vocabulary
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL if token not in added else
                         gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        special = gguf.SpecialVocab(tmp, load_merges=True, n_vocab=n_vocab)
    # The chat format decides how an answer ends and how a conversation is laid out, not the
    # tokenizer's own config: generation must stop on the format's stop token.
    stop = tokenizer.convert_tokens_to_ids(chat_format.stop_tokens[0])
    special.special_token_ids |= {"eos": stop, "pad": tokenizer.convert_tokens_to_ids(chat_format.pad_token)}
    special.chat_template = chat_format.chat_template
    special.add_to_gguf(writer, quiet=True)
    writer.add_eot_token_id(stop)


def write_gguf(model, tokenizer, chat_format, out: str | Path, quant: str = "f16", name: str = "",
               pre: str | None = None) -> Path:
    """Write `model` (a merged, plain transformers model) as the GGUF file `out`, atomically."""
    import gguf

    arch = _check(model, tokenizer, quant)
    if pre is None:
        raise GGUFError("the tokenizer's pre-tokenizer is not known for this base: pass --tokenizer-pre "
                        f"(llama.cpp's names, e.g. {', '.join(sorted(set(PRE_TOKENIZERS.values())))})")
    if quant in LLAMA_CPP_QUANTS:
        return _llama_cpp_quantize(model, tokenizer, chat_format, Path(out), quant, name, pre)
    config = model.config
    with io.atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCHITECTURES[arch][0])
        writer.add_name(name)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_dimension_count(_head_dim(config))
        if _head_dim(config) != config.hidden_size // config.num_attention_heads:
            writer.add_key_length(_head_dim(config))
            writer.add_value_length(_head_dim(config))
        writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(_file_type(quant))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _vocab(writer, tokenizer, chat_format, config.vocab_size, pre)
        for tensor_name, data in _tensors(model, arch):
            array, qtype = _quantized(tensor_name, data, quant)
            writer.add_tensor(tensor_name, array, raw_dtype=qtype)  # quantized: bytes, shape from qtype
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def _llama_cpp_quantize(model, tokenizer, chat_format, out: Path, quant: str, name: str, pre: str) -> Path:
    try:
        import llama_cpp
    except ImportError:
        raise GGUFError(f"--quant {quant} needs llama.cpp's quantizer: pip install 'webtune[llamacpp]' "
                        f"(or export {', '.join(NUMPY_QUANTS)}, which need nothing more)") from None
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        f16 = write_gguf(model, tokenizer, chat_format, Path(tmp) / "f16.gguf", "f16", name, pre)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_CPP_QUANTS[quant]
        with io.atomic_path(out) as dst:
            if llama_cpp.llama_model_quantize(str(f16).encode(), str(dst).encode(), ctypes.byref(params)):
                raise GGUFError(f"llama.cpp's quantizer failed to write {quant}")
    return out
