"""The project's measurable goals, each stated once: the benches and docs/results.md read them from here.

A goal is (target, what it means); a bench compares its numbers against the target, and
bench/report.py prints the same text beside the measured value.
"""

GOALS = {
    # the user's first contact: clone, `make repro`; the install (pip) is part of it
    "make_repro_s": (720.0, "a fresh clone's `make repro`, install included, in <= 12 minutes"),
    "noop_repro_s": (1.0, "`dvc repro` with nothing changed in <= 1 s"),
    "test_suite_s": (600.0, "the whole test suite (`make test`) in <= 10 minutes"),
    "data_mb_s_per_core": (10.0, "clean + validate + format at >= 10 MB of raw pages per second per core"),
    # where users run a small model: one client of `serve` on 2 CPU cores, the embedded default
    "cpu_serve_tokens_s": (60.0, "`serve` on 2 CPU cores: >= 60 generated tokens/s for one client "
                                 "(the embedded default, llama.cpp engine)"),
    # training throughput on one GPU: our unsloth backend as params.yaml configures it, useful tokens/s
    "llama_speedup": (2.0, "Llama-3.1-8B shape: the unsloth backend >= 2x the original Unsloth recipe's "
                           "useful tokens/s, and >= 2x the hf backend's"),
    "gpt_oss_speedup": (2.5, "gpt-oss-20b shape, 4-bit: the unsloth backend >= 2.5x the original Unsloth "
                             "recipe's useful tokens/s"),
    "gpt_oss_peak_gib": (16.0, "gpt-oss-20b shape, 4-bit: the unsloth backend within a 16 GB card "
                               "(peak GPU memory <= 16 GiB)"),
    "loss_match": (0.02, "the unsloth backend's adapter within 2% of the hf backend's test loss"),
    "two_gpu_speedup": (1.8, "2 GPUs >= 1.8x one GPU's training tokens/s"),
}


def target(name: str) -> float:
    return GOALS[name][0]


def text(name: str) -> str:
    return GOALS[name][1]
