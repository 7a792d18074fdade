"""docs/results.md's sections on using the model: serving under load per engine, and what a GGUF quant type
costs in answer quality."""

import goals
from render import Section, Verdict, num, pct, signed_pct, table

# ---------------------------------------------------------------- serve_latency


def serve_table(records: list[dict]) -> list[str]:
    rows = []
    order = {"hf": 0, "llamacpp": 1}
    for rec in sorted(records, key=lambda r: (r["results"]["device"], order[r["results"].get("engine", "hf")],
                                              r["results"]["merged_adapter"])):
        r, gpu = rec["results"], (rec.get("machine") or {}).get("gpu")
        where = (gpu or "GPU") if r["device"] == "cuda" else f"CPU, {r['torch_threads']} threads"
        engine = r.get("engine", "hf")
        what = (f"llama.cpp, GGUF {r['weights']}" if engine == "llamacpp" else
                f"hf, {r.get('weights') or '?'}, {'merged' if r['merged_adapter'] else 'unmerged'}")
        if r["random_weights"]:
            what += ", random weights"
        single = r.get("single") or {}
        share = r.get("bandwidth_share")
        rows.append((where, what, num(single.get("tokens_per_s"), 1),
                     pct(share) + (f" of {num(r['read_gb_s'], 0)} GB/s" if share is not None else ""),
                     num(r["batched"]["requests_per_s"], 2), num(r["batched"]["p50_s"], 1),
                     num(r["batched"]["completion_tokens_per_s"], 1),
                     num((r.get("queued") or {}).get("requests_per_s"), 2)))
    first = records[-1]["results"]
    return ["One client: greedy answers of up to "
            f"{first['max_tokens']} tokens, one after another; share of the memory-bandwidth limit = "
            "tokens/s x bytes of weights read per token / the read bandwidth measured in the same run (it "
            "varies between runs on a shared machine). "
            f"{first['clients']} clients: {first['requests']} requests, the server's default sampling; "
            "hf batches up to 8 waiting requests, llama.cpp answers one at a time (\"one at a time\" is hf "
            "with batching off).", "",
            *table(("where", "engine", "one client tokens/s", "of bandwidth limit",
                    f"{first['clients']} clients requests/s", "p50 s", "tokens/s",
                    "one at a time requests/s"), rows, align="llrrrrrr")]


def serve_verdicts(records: list[dict]) -> list[Verdict]:
    cpu = [r["results"] for r in records if r["results"]["device"] == "cpu" and "single" in r["results"]
           and r["results"].get("engine") == "llamacpp" and not r["results"]["random_weights"]]
    if not cpu:
        return []
    best = max(cpu, key=lambda r: r["single"]["tokens_per_s"])
    rate = best["single"]["tokens_per_s"]
    return [Verdict("cpu_serve_tokens_s", f"{num(rate, 1)} tokens/s (llama.cpp, {best['weights']})",
                    rate >= goals.target("cpu_serve_tokens_s"))]


SERVE = Section(
    bench="serve_latency", title="Serving under load",
    what="`serve` (webtune's OpenAI-compatible server) through the real openai client, per engine: hf "
         "(transformers) and llama.cpp (the adapter exported as GGUF). On a GPU machine the base's weights "
         "cannot travel, so its architecture runs with random weights beside the real adapter: the same "
         "compute per token, but answers rarely stop early. A row without a one-client run was measured "
         "before that run existed.",
    run="`make bench-serve` (CPU, every engine) and `bash bench/gpu_serve.sh` (GPU)", table=serve_table,
    verdicts=serve_verdicts, goals=("cpu_serve_tokens_s",),
    label=lambda r: ("GPU" if r["device"] == "cuda" else "CPU") + f", {r.get('engine', 'hf')} "
                    f"{r.get('weights') or ''}" + (", merged" if r["merged_adapter"] else ""))

# ---------------------------------------------------------------- gguf_quality


def gguf_table(records: list[dict]) -> list[str]:
    r = records[-1]["results"]
    merged = r["models"]["merged"]
    rows = []
    for name, m in sorted(r["models"].items(), key=lambda item: item[0] != "merged"):  # merged first
        rows.append((name if name == "merged" else f"GGUF {name}",
                     num(m["file_bytes"] / 1e6, 0, " MB") if m["file_bytes"] else "–",
                     num(m["loss"], 4), num(m["bits_per_byte"], 4), num(m["chrf1"], 1),
                     num(m["rougeL_f1"], 3), pct(m["stop_rate"], 0), pct(m["answers_identical_to_merged"], 0),
                     "–" if name == "merged" else signed_pct((m["loss"] - merged["loss"]) / merged["loss"])))
    return [f"{r['rows']} test rows, {r['docs']} held-out pages; greedy answers as evaluate makes them:", "",
            *table(("model", "file", "test loss", "bits per byte", "chrF1", "ROUGE-L F1", "answers that stop",
                    "answers as merged", "loss vs merged"), rows, align="lrrrrrrrr")]


GGUF_QUALITY = Section(
    bench="gguf_quality", title="What a GGUF quant type costs",
    what="The merged model (base + adapter, fp32) against its GGUF exports read back through transformers' "
         "GGUF reader (weights dequantized to fp32: the weights' rounding, not llama.cpp's kernels), scored "
         "with evaluate's metrics on the embedded default's test rows and held-out pages.",
    run="`make bench-serve`", table=gguf_table)

SECTIONS = [SERVE, GGUF_QUALITY]
