"""export: the adapter merged into its base, saved as a safetensors model folder or as one GGUF file.

    python -m webtune.cli.export --base models/base --adapter models/adapter --out exports/merged \
        [--dtype bfloat16|float16|float32]
    python -m webtune.cli.export --format gguf --quant q8_0 --out exports/gguf     # llama.cpp, Ollama

    model = AutoModelForCausalLM.from_pretrained("exports/merged")    # no PEFT, no webtune needed
    tokenizer = AutoTokenizer.from_pretrained("exports/merged")        # with its chat template
    llama-server -m exports/gguf/model.gguf                            # or: ollama create x -f Modelfile

A GGUF folder holds model.gguf (webtune.models.to_gguf: weights in --quant, the tokenizer, the format's
chat template and stop token), an Ollama Modelfile and the same lineage README.

The folder holds the merged weights (PEFT's merge_and_unload: W + scale * B @ A folded into each
target), the tokenizer with the format's chat template, a generation config whose eos ids are the
format's stop tokens (so plain `generate` stops where webtune's chat does), and a README naming the base
and the adapter it came from. It is written next to `--out` and renamed into place when complete.

Not a DVC stage on purpose: a merged 20B model is tens of GB, a copy of what the base and the small
adapter already version. So `--out` may not be inside `data/` or `models/`, whose contents DVC owns.
"""

import argparse
import json
from pathlib import Path

from webtune import errors, io
from webtune.models import base_info, load_adapter, load_base, to_gguf

DTYPES = ("bfloat16", "float16", "float32")
FORMATS = ("safetensors", "gguf")
DVC_OWNED = ("data", "models")  # the pipeline's output folders


class ExportError(errors.UserError):
    """The export cannot be written where or how it was asked for."""


def check_out(out: Path, project: Path) -> None:
    resolved, project = out.resolve(), project.resolve()
    for owned in DVC_OWNED:
        if resolved == project / owned or (project / owned) in resolved.parents:
            raise ExportError(f"--out {out}: inside {owned}/, whose contents DVC owns; export somewhere else "
                              "(e.g. exports/merged, git-ignored)")


def merged(base_dir: Path, adapter_dir: Path | None):
    """(the base, its model with the adapter folded in: PEFT's merge_and_unload, in the base's fp32; the
    base's own model when adapter_dir is None)."""
    base = load_base(base_dir)
    model = load_adapter(base, adapter_dir).merge_and_unload() if adapter_dir is not None else base.model
    stops = base.tokenizer.convert_tokens_to_ids(list(base.chat_format.stop_tokens))
    model.generation_config.eos_token_id = stops
    model.generation_config.pad_token_id = base.tokenizer.pad_token_id
    return base, model


def export(base_dir: Path, adapter_dir: Path, out: Path, dtype: str, fmt: str = "safetensors",
           quant: str = "f16", tokenizer_pre: str | None = None) -> dict:
    """Merge and save as `fmt`; returns what the README records."""
    import torch

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "safetensors" and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    info = base_info(base_dir)
    pre = tokenizer_pre or to_gguf.pre_tokenizer(info.get("model"))
    base, model = merged(base_dir, adapter_dir)
    lineage = {"base": str(base_dir), "base_model": info.get("model"), "adapter": str(adapter_dir),
               "chat_format": base.chat_format.name, "stop_tokens": list(base.chat_format.stop_tokens)}
    lineage |= {"format": "gguf", "quant": quant} if fmt == "gguf" else {"dtype": dtype}
    with io.atomic_dir(out) as tmp:
        if fmt == "gguf":
            to_gguf.write_gguf(model, base.tokenizer, base.chat_format, tmp / "model.gguf", quant,
                               name=f"{info.get('model')} + webtune adapter", pre=pre)
            (tmp / "Modelfile").write_text(modelfile(base.chat_format))
            how = "`llama-server -m model.gguf`, or `ollama create NAME -f Modelfile`"
        else:
            model.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
            base.tokenizer.save_pretrained(tmp)
            how = "`AutoModelForCausalLM.from_pretrained(this_folder)`, its tokenizer with the chat template"
        (tmp / "README.md").write_text(
            f"# {lineage['base_model']} + webtune adapter, merged ({quant if fmt == 'gguf' else dtype})\n\n"
            f"Load with {how} ({lineage['chat_format']}). Made by `python -m webtune.cli.export` from:\n\n"
            f"```json\n{json.dumps(lineage, indent=2)}\n```\n")
    return lineage


def modelfile(chat_format) -> str:
    """Ollama's recipe for the folder: the file, and the format's stop tokens (Ollama reads the chat
    template from the GGUF)."""
    stops = "".join(f'PARAMETER stop "{t}"\n' for t in chat_format.stop_tokens)
    return f"FROM ./model.gguf\n{stops}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    parser.add_argument("--format", default="safetensors", choices=FORMATS,
                        help="safetensors (transformers, vLLM) or gguf (llama.cpp, Ollama)")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="safetensors: bfloat16 (default: what GPUs serve), float16, or float32 (exact)")
    parser.add_argument("--quant", default="f16", choices=to_gguf.QUANTS,
                        help="gguf: f32 (exact), f16 (default), bf16, q8_0; K-quants need llama-cpp-python")
    parser.add_argument("--tokenizer-pre", default=None,
                        help="gguf: llama.cpp's pre-tokenizer name, for a base webtune does not know")
    args = parser.parse_args(argv)
    with errors.reported("export"):
        check_out(args.out, Path.cwd())
        lineage = export(args.base, args.adapter, args.out, args.dtype, args.format, args.quant,
                         args.tokenizer_pre)
    if args.format == "gguf":
        io.stderr(f"export: {args.out}/model.gguf ({args.quant}, {lineage['chat_format']}): "
                  f"llama-server -m {args.out}/model.gguf, or ollama create NAME -f {args.out}/Modelfile")
    else:
        io.stderr(f"export: {args.out} ({args.dtype}, {lineage['chat_format']}): "
                  "AutoModelForCausalLM.from_pretrained loads it")


if __name__ == "__main__":
    main()
