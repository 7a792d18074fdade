"""base: the base model and tokenizer that format, train and evaluate share.

    python -m stages.base --out models/base --metrics metrics/base.json

Three kinds of base, chosen by `base.model` in params.yaml:

- `smollm2-135m-instruct` (the embedded default; webtune.models.packaged): a pretrained instruct model
  that a pinned package ships as GGUF, written as a plain Hugging Face folder, its file's sha256 recorded.
- `tiny-gpt-oss` (webtune.models.tiny): a ~0.65 M-param gpt-oss built from `base.tiny` and warmed up on
  a packaged corpus in a minute: the fast harmony model of the tests.
- a Hugging Face Hub id (e.g. `unsloth/gpt-oss-20b`; webtune.models.hub): `base.revision` is resolved to
  the exact commit sha and the tokenizer of that commit saved; weights load in train, at that commit.

None of them reads scraped data, so a re-scrape or a clean knob never rebuilds the base. The stage
records which chat format the tokenizer uses (webtune.formats) and writes the tokenizer and the model as
two outputs (`--out`/tokenizer, `--out`/model): format reads only the first, so a change that only
touches the weights leaves it up to date. Later stages load through webtune.models and never care which
kind the base was.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from webtune import errors, io
from webtune.models import TINY, BaseParams
from webtune.models.packaged import PACKAGED
from webtune.params import load_section

STAGE = "base"


def base(params: BaseParams, *, out: Path) -> dict:
    """Write (packaged), build (tiny) or pin (hub) the base into `out`; return the metrics."""
    if params.model in PACKAGED:
        from webtune.models.packaged import save_packaged_base

        return save_packaged_base(params.model, out)
    if params.model == TINY:
        from webtune.models.tiny_build import build_tiny_base
        from webtune.models.tiny_tokenizer import warmup_corpus

        return build_tiny_base(params.tiny, warmup_corpus(), out)
    from webtune.models.hub import save_hub_base

    return save_hub_base(params.model, params.revision, out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path,
                        help="base folder to write (tokenizer/ and model/)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        io.write_json(base(params, out=args.out), args.metrics)


if __name__ == "__main__":
    main()
