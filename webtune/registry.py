"""Names -> modules: every params section, source, chat format and training backend webtune knows.

This module imports nothing, so anything may import it without a cycle: the params loader checks names
against it (`train.backend: 'jax' is not one of ...`) and the seams import a variant's module only when
it is used (`importlib.import_module(SOURCES[name])`). Adding a source, chat format or backend is one
module, one line here and, for a source or backend, its section in params.yaml:

- a source module (`webtune/sources/*.py`) exposes `fetch(params, ...)` and `PARAMS`, the frozen dataclass
  of its section under `scrape:` (scrape.<name>);
- a backend module (`webtune/training/*.py`) exposes `BACKEND` and `PARAMS` (its section train.<name>);
- a chat-format module (`webtune/formats/*.py`) exposes `FORMAT`;
- an executor module (`webtune/executors/*.py`) exposes `run(pipeline, ...)` and `SETTINGS`, the frozen
  dataclass of its section in the git-ignored .webtune/executor.yaml (executors are no params: the same
  tasks give the same bytes on each).
"""

# params.yaml section -> "module:dataclass" (webtune.params.load_section builds it; each stage lists
# its section's keys in dvc.yaml)
SECTIONS = {
    "scrape": "webtune.sources:ScrapeParams",
    "clean": "webtune.cleaning:CleanParams",
    "validate": "webtune.expectations:ValidateParams",
    "base": "webtune.models:BaseParams",
    "format": "webtune.splits:FormatParams",
    "train": "webtune.training:TrainParams",
    "evaluate": "webtune.evaluation:EvaluateParams",
}

# scrape.source -> module
SOURCES = {
    "pydoc": "webtune.sources.pydoc",  # CPython's own documentation: the embedded default, offline
    "files": "webtune.sources.files",  # HTML, markdown, text, JSONL or CSV files under data/sources
    "http": "webtune.sources.http",  # plain HTTP GET of a URL list
    "brightdata_unlocker": "webtune.sources.brightdata_unlocker",  # Bright Data Web Unlocker: pages
    "brightdata_dataset": "webtune.sources.brightdata_dataset",  # Bright Data Web Scraper API: records
}

# train.backend -> module
BACKENDS = {
    "hf": "webtune.training.hf",  # transformers + PEFT + TRL, CPU or GPU, one or several processes
    "unsloth": "webtune.training.unsloth",  # Unsloth's loading and LoRA under hf's loop (CUDA)
    "openai": "webtune.training.openai",  # a hosted fine-tune through the OpenAI API
}
AUTO = "auto"  # train.backend auto: unsloth on a CUDA GPU with Unsloth installed, hf elsewhere
BACKEND_CHOICES = (*BACKENDS, AUTO)

# base.* variant sections -> module (read only when base.model names that variant)
BASES = {
    "tiny": "webtune.models.tiny",  # a tiny gpt-oss built from a config (base.model: tiny-gpt-oss)
}

# chat format name (recorded by the base stage) -> module
FORMATS = {
    "harmony": "webtune.formats.harmony",  # gpt-oss
    "chatml": "webtune.formats.chatml",  # SmolLM2, Qwen
    "llama3": "webtune.formats.llama3",  # Llama 3.x
}

# WEBTUNE_EXECUTOR or .webtune/executor.yaml's executor: -> module (webtune.executors.run picks one)
EXECUTORS = {
    "local": "webtune.executors.local",  # datatrove's local executor: this process or a process pool
    "slurm": "webtune.executors.slurm",  # a Slurm job array, waited on until it ends
    "ray": "webtune.executors.ray",  # a Ray cluster (RAY_ADDRESS) or a local Ray runtime
}
