"""`serve` under load, per engine: tokens/s for one client, requests/s for concurrent clients, and how
near the memory-bandwidth limit one client's decoding runs. Through the real openai client.

    python bench/serve_latency.py --merge --out bench/results/serve_latency.json                # hf, fp32
    python bench/serve_latency.py --merge --dtype bfloat16 --out bench/results/serve_latency.json
    python bench/serve_latency.py --engine llamacpp --quant q8_0 --out bench/results/serve_latency.json
    python bench/serve_latency.py --smoke    # a tiny Llama and a fresh LoRA in a temp dir: seconds

Starts webtune's server (webtune.cli.serve: uvicorn, one generation worker) on 127.0.0.1 in this process
with the engine asked for: hf (transformers, waiting requests batched up to 8) or llamacpp (the adapter
exported as GGUF in --quant, answered by llama.cpp one request at a time). Runs, each after a warm-up
round that is not counted:
- single: one client sends `--single-requests` chat completions one after another, greedy, up to
  `--max-tokens` new tokens each: generated tokens over the wall time (prompt processing included);
- clients: `--clients` threads send `--requests` completions (test-split questions of
  data/format/test.parquet, the server's default sampling): requests/s, p50/p95 latency, tokens/s;
- queued (hf only): the same with max batch 1, to show what batching buys.
Decoding one token reads every weight once, so one client's tokens/s is capped by memory bandwidth:
`bytes_per_token` (the weights as the engine holds them) x tokens/s against a measured read bandwidth
(torch summing a 1 GiB tensor on the same threads) gives `bandwidth_share`. A record replaces the one of
the same device, engine, weights, merge and random weights in --out (bench/record.py).
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


def read_bandwidth(threads: int) -> float:
    """GB/s that `threads` torch threads read from memory: the best of 5 sums of a 1 GiB float32 tensor."""
    import torch

    torch.set_num_threads(threads)
    x = torch.ones(1 << 28)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return round(x.numel() * 4 / best / 1e9, 2)


def single_run(url: str, questions: list[list[dict]], max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    tokens, t0 = 0, time.perf_counter()
    for conversation in questions:
        reply = client.chat.completions.create(model="webtune", messages=conversation, max_tokens=max_tokens,
                                               temperature=0)
        tokens += reply.usage.completion_tokens
    wall = time.perf_counter() - t0
    return {"requests": len(questions), "wall_s": round(wall, 2), "completion_tokens": tokens,
            "tokens_per_s": round(tokens / wall, 1)}


def engine_chat(args, device: str):
    """(chat model, the most requests it batches, bytes of weights read per decoded token, label)."""
    import torch

    if args.engine == "llamacpp":
        from gguf import GGUFReader

        from webtune.models.llamacpp_chat import LlamaCppChat, gguf_for

        gguf = args.gguf or gguf_for(args.base, args.adapter, args.quant)
        weights = sum(int(t.n_bytes) for t in GGUFReader(gguf).tensors)
        return LlamaCppChat.load(gguf, args.base, threads=args.threads), 1, weights, args.quant
    chat = random_weights(args.base, args.adapter, device) if args.random_weights else ChatModel.load(
        args.base, args.adapter)
    if args.merge:
        chat = merged(chat)
    chat.model.to(device=device, dtype=getattr(torch, args.dtype))
    weights = sum(p.numel() * p.element_size() for p in chat.model.parameters())
    return chat, 8, weights, args.dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--test", type=Path, default=Path("data/format/test.parquet"))
    parser.add_argument("--engine", choices=("hf", "llamacpp"), default="hf")
    parser.add_argument("--dtype", default="float32", help="hf: the weights' dtype (float32, bfloat16)")
    parser.add_argument("--quant", default="q8_0", help="llamacpp: the GGUF's quant type")
    parser.add_argument("--gguf", type=Path, default=None, help="llamacpp: this GGUF file instead")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--single-requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="results JSON (bench/record.py)")
    parser.add_argument("--merge", action="store_true", help="hf: merge the adapter first, as `serve` does")
    parser.add_argument("--random-weights", action="store_true",
                        help="hf: the base's architecture (its config.json) with random weights, for a "
                             "machine its weights cannot reach: the same compute per token")
    parser.add_argument("--smoke", action="store_true", help="a tiny Llama, 2 clients, 4 requests, 4 tokens")
    args = parser.parse_args()
    recorder = Recorder("serve_latency", smoke=args.smoke)

    import torch

    with tempfile.TemporaryDirectory(prefix="serve-smoke-") as tmp:
        if args.smoke:
            args.base, args.adapter, args.test = toy_model(Path(tmp))
            args.clients, args.requests, args.single_requests, args.max_tokens, args.threads = 2, 4, 2, 4, 1
        torch.set_num_threads(args.threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # before any engine exists: llama.cpp's threads keep polling for a while after a generation,
        # and a measure taken then read 30-35 GB/s where an idle machine reads ~50
        bandwidth = read_bandwidth(args.threads) if device == "cpu" else None
        chat, max_batch, weight_bytes, weights = engine_chat(args, device)
        _, rows = io.read_chat_rows(args.test)
        questions = [formats.prompt_messages(m) for m in (rows * args.requests)[: args.requests]]
        runs = {}
        modes = [("single", max_batch), ("batched", max_batch)] + ([("queued", 1)] if max_batch > 1 else [])
        for name, batch in modes:
            server, url = start(chat, batch)
            if name == "single":
                single_run(url, questions[:1], args.max_tokens)  # warm-up, not counted
                runs[name] = single_run(url, questions[: args.single_requests], args.max_tokens)
            else:
                load_run(url, questions[: args.clients], args.clients, args.max_tokens)  # warm-up
                runs[name] = load_run(url, questions, args.clients, args.max_tokens)
            server.should_exit = True
            print(name, json.dumps(runs[name]), file=sys.stderr, flush=True)
    achieved = runs["single"]["tokens_per_s"] * weight_bytes / 1e9
    result = {"clients": args.clients, "requests": args.requests, "max_tokens": args.max_tokens,
              "device": device, "engine": args.engine, "weights": weights,
              "random_weights": args.random_weights,
              "merged_adapter": args.merge or args.engine == "llamacpp",  # a GGUF is always merged
              "torch_threads": args.threads, "base": str(args.base), "adapter": str(args.adapter),
              "bytes_per_token": weight_bytes, "read_gb_s": bandwidth,
              "bandwidth_share": round(achieved / bandwidth, 3) if bandwidth else None, **runs}
    recorder.save(args.out, result, key=("device", "engine", "weights", "merged_adapter", "random_weights"))


if __name__ == "__main__":
    main()
