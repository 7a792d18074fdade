"""export: the adapter merged into its base, saved as a standard 16-bit safetensors model folder.

    python -m webtune.cli.export --base models/base --adapter models/adapter --out exports/merged \
        [--dtype bfloat16|float16|float32]

    model = AutoModelForCausalLM.from_pretrained("exports/merged")    # no PEFT, no webtune needed
    tokenizer = AutoTokenizer.from_pretrained("exports/merged")        # with its chat template

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
from webtune.models import base_info, load_adapter, load_base

DTYPES = ("bfloat16", "float16", "float32")
DVC_OWNED = ("data", "models")  # the pipeline's output folders


class ExportError(errors.UserError):
    """The export cannot be written where or how it was asked for."""


def check_out(out: Path, project: Path) -> None:
    resolved, project = out.resolve(), project.resolve()
    for owned in DVC_OWNED:
        if resolved == project / owned or (project / owned) in resolved.parents:
            raise ExportError(f"--out {out}: inside {owned}/, whose contents DVC owns; export somewhere else "
                              "(e.g. exports/merged, git-ignored)")


def export(base_dir: Path, adapter_dir: Path, out: Path, dtype: str) -> dict:
    """Merge and save; returns what the README records."""
    import torch

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: one of {', '.join(DTYPES)}")
    base = load_base(base_dir)
    merged = load_adapter(base, adapter_dir).merge_and_unload()  # merged in the base's fp32, cast after
    merged = merged.to(getattr(torch, dtype))
    stops = base.tokenizer.convert_tokens_to_ids(list(base.chat_format.stop_tokens))
    merged.generation_config.eos_token_id = stops
    merged.generation_config.pad_token_id = base.tokenizer.pad_token_id
    lineage = {"base": str(base_dir), "base_model": base_info(base_dir).get("model"),
               "adapter": str(adapter_dir), "chat_format": base.chat_format.name, "dtype": dtype,
               "stop_tokens": list(base.chat_format.stop_tokens)}
    with io.atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        base.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(
            f"# {lineage['base_model']} + webtune adapter, merged ({dtype})\n\n"
            "Load with `AutoModelForCausalLM.from_pretrained(this_folder)`; the tokenizer carries the chat "
            f"template ({lineage['chat_format']}). Made by `python -m webtune.cli.export` from:\n\n"
            f"```json\n{json.dumps(lineage, indent=2)}\n```\n")
    return lineage


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--out", type=Path, required=True, help="the merged model folder to write")
    parser.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                        help="bfloat16 (default: what GPUs serve), float16, or float32 (exact)")
    args = parser.parse_args(argv)
    with errors.reported("export"):
        check_out(args.out, Path.cwd())
        lineage = export(args.base, args.adapter, args.out, args.dtype)
    io.stderr(f"export: {args.out} ({lineage['dtype']}, {lineage['chat_format']}): "
              "AutoModelForCausalLM.from_pretrained loads it")


if __name__ == "__main__":
    main()
