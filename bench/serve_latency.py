"""`serve` under load: requests/s and latency for concurrent clients, through the real openai client.

    python bench/serve_latency.py --base models/base --adapter models/adapter --clients 8 --requests 32 \
        --max-tokens 64 --out bench/results/serve_latency.json
    python bench/serve_latency.py --smoke    # a tiny Llama and a fresh LoRA in a temp dir: seconds

Starts webtune's server (webtune.cli.serve: uvicorn, one generation worker that batches waiting requests)
on 127.0.0.1 in this process, then `--clients` threads each send `--requests / --clients` chat completions
one after another (test-split questions of data/format/test.parquet, `--max-tokens` new tokens, the
server's default sampling: temperature 0.7, top_p 0.9; seeds are not sent, so requests can be batched).
Reports requests/s over the whole run, p50/p95 of each request's latency, and generated tokens/s, once
with batching as served (max batch 8) and once with max batch 1 (a plain queue) for comparison. A
warm-up round (one request per client, not counted) comes first. A record replaces the one of the same
device, merge and weights in --out (bench/record.py), so CPU and GPU runs sit side by side.
"""

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record import Recorder  # noqa: E402

from webtune import formats, io  # noqa: E402
from webtune.cli.serve import create_app, merged  # noqa: E402
from webtune.models.inference import ChatModel  # noqa: E402


def start(chat, max_batch: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(chat, model_name="webtune", max_batch=max_batch),
                                           host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"


def random_weights(base: Path, adapter: Path, device: str) -> ChatModel:
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    from webtune.models import load_tokenizer

    tokenizer, fmt = load_tokenizer(base / "tokenizer")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base / "model"),
                                             dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    return ChatModel(PeftModel.from_pretrained(model, adapter), tokenizer, fmt)


def toy_model(folder: Path) -> tuple[Path, Path, Path]:
    """(base, adapter, test rows) of a tiny Llama with a fresh LoRA: the smoke run's stand-ins."""
    from peft import LoraConfig, get_peft_model
    from shapes import build

    from webtune.models import load_base

    build("tiny-llama", folder, n_rows=16)
    base = load_base(folder / "base")
    lora = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    lora.save_pretrained(folder / "adapter")
    return folder / "base", folder / "adapter", folder / "train.parquet"


def load_run(url: str, questions: list[list[dict]], clients: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    latencies, tokens = [], []
    lock = threading.Lock()

    def one(conversation):
        t = time.perf_counter()
        reply = client.chat.completions.create(model="webtune", messages=conversation, max_tokens=max_tokens)
        with lock:
            latencies.append(time.perf_counter() - t)
            tokens.append(reply.usage.completion_tokens)

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, questions))
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=20)
    return {"requests": len(questions), "wall_s": round(wall, 2),
            "requests_per_s": round(len(questions) / wall, 3),
            "p50_s": round(statistics.median(latencies), 2), "p95_s": round(q[18], 2),
            "completion_tokens_per_s": round(sum(tokens) / wall, 1),
            "mean_completion_tokens": round(sum(tokens) / len(tokens), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--test", type=Path, default=Path("data/format/test.parquet"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--merge", action="store_true", help="merge the adapter first, as `serve` does")
    parser.add_argument("--random-weights", action="store_true",
                        help="the base's architecture (its config.json) with random weights, for a machine "
                             "its weights cannot reach: the same compute per token; answers rarely stop")
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama, 2 clients, 4 requests, 4 tokens")
    args = parser.parse_args()
    recorder = Recorder("serve_latency", smoke=args.smoke)

    import torch

    with tempfile.TemporaryDirectory(prefix="serve-smoke-") as tmp:
        if args.smoke:
            args.base, args.adapter, args.test = toy_model(Path(tmp))
            args.clients, args.requests, args.max_tokens, args.threads = 2, 4, 4, 1
        torch.set_num_threads(args.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        chat = random_weights(args.base, args.adapter, device) if args.random_weights else ChatModel.load(
            args.base, args.adapter)
        _, rows = io.read_chat_rows(args.test)
    if args.merge:
        chat = merged(chat)
    chat.model.to(device)
    questions = [formats.prompt_messages(m) for m in (rows * args.requests)[: args.requests]]
    runs = {}
    for name, max_batch in (("batched", 8), ("queued", 1)):
        server, url = start(chat, max_batch)
        load_run(url, questions[: args.clients], args.clients, args.max_tokens)  # warm-up, not counted
        runs[name] = load_run(url, questions, args.clients, args.max_tokens)
        server.should_exit = True
        print(name, json.dumps(runs[name]), file=sys.stderr, flush=True)
    result = {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
              "device": device, "random_weights": args.random_weights, "merged_adapter": args.merge,
              "torch_threads": args.threads, "base": str(args.base), "adapter": str(args.adapter), **runs}
    recorder.save(args.out, result, key=("device", "merged_adapter", "random_weights"))


if __name__ == "__main__":
    main()
