"""What a GGUF quant type costs in answer quality: evaluate's metrics on the merged model and on its GGUF
exports read back, on the embedded default's test rows and held-out pages.

    python bench/gguf_quality.py --quants f16 q8_0 --out bench/results/gguf_quality.json
    python bench/gguf_quality.py --smoke      # a tiny Llama and a fresh LoRA: seconds

The merged model (base + adapter, fp32) is the reference. Each quant type is exported with
`webtune.cli.export --format gguf` and loaded back through transformers' GGUF reader, which dequantizes
the weights to fp32: the numbers measure the weights' rounding, not llama.cpp's kernels (whose q8_0
matmuls also round activations to 8 bits). Per model: the assistant-token loss on the test rows, bits per
byte of the held-out pages, and greedy answers scored as evaluate scores them (chrF1, ROUGE-L, stop rate);
plus the share of answers identical to the merged model's.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from record import Recorder  # noqa: E402

from webtune import io  # noqa: E402
from webtune.evaluation import METRICS  # noqa: E402
from webtune.evaluation.answers import answer_stats  # noqa: E402
from webtune.params import load_section  # noqa: E402

SCORED = ("loss", "bits_per_byte", "chrf1", "rougeL_f1", "stop_rate")


def scores(chat, rows, docs, params, supervised) -> tuple[dict, list[str]]:
    import numpy as np

    losses = np.array(chat.row_losses(rows, params.batch_size, supervised.channels,
                                      supervised.assistant_turns), dtype=float).reshape(-1, 2)
    nll = np.array(chat.text_nll(docs, params.text_window, params.batch_size), dtype=float).reshape(-1, 2)
    answers = chat.generate(rows, params.max_new_tokens, params.batch_size,
                            repetition_penalty=params.repetition_penalty,
                            no_repeat_ngram_size=params.no_repeat_ngram_size)
    stats = {"loss": losses, "bits_per_byte": np.column_stack([nll[:, 0], [len(d.encode()) for d in docs]]),
             **answer_stats(answers, [m[-1]["content"] for m in rows])}
    return {k: round(float(METRICS[k].value(stats[k].sum(0))), 4) for k in SCORED}, [a.text for a in answers]


def gguf_chat(base: Path, adapter: Path, quant: str, folder: Path, pre: str | None):
    import torch
    from transformers import AutoModelForCausalLM

    from webtune.cli.export import export
    from webtune.models import load_tokenizer
    from webtune.models.inference import ChatModel

    export(base, adapter, folder, "float32", "gguf", quant, pre)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()
    tokenizer, fmt = load_tokenizer(base / "tokenizer")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(list(fmt.stop_tokens))
    return ChatModel(model, tokenizer, fmt), (folder / "model.gguf").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--test", type=Path, default=Path("data/format/test.parquet"))
    parser.add_argument("--docs", type=Path, default=Path("data/format/test_docs.parquet"))
    parser.add_argument("--quants", nargs="+", default=["f16", "q8_0"])
    parser.add_argument("--tokenizer-pre", default=None, help="as export's, for a base webtune does not know")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama, 4 rows, q8_0 only")
    args = parser.parse_args()
    recorder = Recorder("gguf_quality", smoke=args.smoke)

    from stages.evaluate import held_out
    from webtune.cli.export import merged
    from webtune.models import load_tokenizer
    from webtune.models.inference import ChatModel

    params = load_section("evaluate", REPO / "params.yaml")
    supervised = load_section("train", REPO / "params.yaml")
    with tempfile.TemporaryDirectory(prefix="gguf-quality-") as tmp:
        tmp = Path(tmp)
        if args.smoke:
            from serve_latency import toy_model

            args.base, args.adapter, args.test = toy_model(tmp / "toy")
            args.quants, args.tokenizer_pre = ["q8_0"], "gpt2"
        _, rows = io.read_chat_rows(args.test)
        rows = rows[:4] if args.smoke else rows
        docs = ([m[-1]["content"] for m in rows] if args.smoke
                else held_out(args.docs, params.page_bytes)[1])
        tokenizer, fmt = load_tokenizer(args.base / "tokenizer")
        reference = ChatModel(merged(args.base, args.adapter)[1], tokenizer, fmt)
        start = time.perf_counter()
        models = {"merged": (*scores(reference, rows, docs, params, supervised), None)}
        print(f"merged: {models['merged'][0]} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        for quant in args.quants:
            chat, size = gguf_chat(args.base, args.adapter, quant, tmp / quant, args.tokenizer_pre)
            models[quant] = (*scores(chat, rows, docs, params, supervised), size)
            print(f"{quant}: {models[quant][0]}", file=sys.stderr)
    reference_answers = models["merged"][1]
    same = {q: round(sum(a == b for a, b in zip(m[1], reference_answers, strict=True)) / len(rows), 3)
            for q, m in models.items()}
    result = {"rows": len(rows), "docs": len(docs),
              "models": {q: {**m[0], "file_bytes": m[2], "answers_identical_to_merged": same[q]}
                         for q, m in models.items()}}
    recorder.save(args.out, result)


if __name__ == "__main__":
    main()
