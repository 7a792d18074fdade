"""base: the base model and tokenizer that format, train and evaluate share.

    python -m stages.base --corpus data/clean/docs.parquet --out models/base --metrics metrics/base.json

Two kinds of base, chosen by `base.model` in params.yaml:

- `tiny-gpt-oss` (offline, the default; webtune.models.tiny): a BPE tokenizer trained on the clean
  corpus, a ~0.65 M-param gpt-oss built from a config and a short causal-LM warm-up on the same corpus.
- a Hugging Face Hub id (e.g. `unsloth/gpt-oss-20b`; webtune.models.hub): `base.revision` is resolved to
  the exact commit sha and the tokenizer of that commit saved; weights load in train, at that commit.

Either way the stage records which chat format the tokenizer uses (webtune.formats), and writes the
tokenizer and the model as two outputs (`--out`/tokenizer, `--out`/model): format reads only the first,
so a change that only touches the weights leaves it up to date. Later stages load through
webtune.models and never care which kind the base was.
"""

import argparse
from collections.abc import Sequence
from pathlib import Path

from webtune import errors, io
from webtune.models import TINY
from webtune.params import BaseParams, load_section

STAGE = "base"


def base(params: BaseParams, *, corpus: Path, out: Path) -> dict:
    """Build (tiny) or pin (hub) the base into `out`; return the metrics."""
    if params.model == TINY:
        from webtune.models.tiny import build_tiny_base

        texts = read_texts(corpus)
        if not texts:
            raise errors.InputError(f"{corpus} has no documents to train a tokenizer on")
        return build_tiny_base(params, texts, out)
    from webtune.models.hub import save_hub_base

    return save_hub_base(params.model, params.revision, out)


def read_texts(path: Path) -> list[str]:
    parquet = io.parquet_file(path, ["text"], "the clean stage")
    return parquet.read(columns=["text"]).column("text").to_pylist()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, type=Path, help="clean docs Parquet (its text column)")
    parser.add_argument("--out", required=True, type=Path,
                        help="base folder to write (tokenizer/ and model/)")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON to write")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    with errors.reported(STAGE):
        params = load_section(STAGE, args.params)
        io.write_json(base(params, corpus=args.corpus, out=args.out), args.metrics)


if __name__ == "__main__":
    main()
