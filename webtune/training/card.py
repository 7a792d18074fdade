"""The adapter's model card (README.md in the adapter folder) and its canonical adapter_config.json.

The card is the adapter's lineage: the base (tiny recipe hash, or hub id at a commit), the md5 of the
data it was trained on (as dvc.lock records it), the chat format and its template hash, the params that
shaped the weights, seeds, library versions and the validation losses. It holds no wall-clock number,
so the same run writes the same card, byte for byte.
"""

import hashlib
import json
import math
import platform
from pathlib import Path

import yaml

from webtune.formats import ChatFormat
from webtune.params import without_report_knobs
from webtune.training import TrainParams

USAGE = """```python
from webtune.models.inference import ChatModel
chat = ChatModel.load("models/base", "models/adapter")
print(chat.generate([[{"role": "user", "content": "What does json.dumps do?"},
                      {"role": "assistant", "content": ""}]], max_new_tokens=128, batch_size=1)[0].text)
```"""


def library_versions() -> dict[str, str]:
    import datasets
    import peft
    import torch
    import transformers
    import trl

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__,
            "datasets": datasets.__version__}


def val_section(metrics: dict) -> str:
    if metrics.get("val_loss") is None:
        return "No validation split: the test-split numbers of the evaluate stage are the only held-out ones."
    rows = [f"| {name} | {metrics[key]:.4f} | {math.exp(metrics[key]):.2f} |"
            for name, key in (("base", "base_val_loss"), ("adapter", "val_loss"))]
    return "\n".join([
        ("Assistant-token loss as the trainer reports it (a mean over evaluation batches); "
         "the evaluate stage's"),
        "`metrics/evaluate.json` has token-weighted numbers on the test split.", "",
        "| model | loss | perplexity |", "|---|---|---|", *rows])


def model_card(*, params: TrainParams, base_info: dict, chat_format: ChatFormat, data_md5: dict,
               metrics: dict, device: str) -> str:
    if base_info["kind"] == "tiny":
        base_line = (f"`{base_info['model']}` built by the base stage, "
                     f"recipe sha256 `{base_info['recipe_sha256']}`")
    elif base_info["kind"] == "packaged":
        base_line = (f"`{base_info['model']}` ({base_info['license']}) from the `{base_info['package']}` "
                     f"{base_info['package_version']} wheel, `{base_info['file']}` sha256 "
                     f"`{base_info['file_sha256']}`")
    else:
        base_line = f"`{base_info['model']}` at commit `{base_info['revision']}`"
    front = {"library_name": "peft", "base_model": base_info["model"], "tags": ["webtune", "lora", "sft"]}
    data_rows = "\n".join(f"| `{name}` | `{md5}` |" for name, md5 in data_md5.items())
    version_rows = "\n".join(f"| {k} | {v} |" for k, v in library_versions().items())
    template_sha = hashlib.sha256(chat_format.chat_template.encode()).hexdigest()
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# webtune LoRA adapter

A LoRA adapter trained by webtune's `train` stage (backend `{params.backend}`, on {device}, \
{metrics.get('precision', 'fp32')}) with assistant-only
loss on {chat_format.name}-formatted chat rows.

{USAGE}

## Lineage

- Base: {base_line}
- Chat format: `{chat_format.name}`, template sha256 `{template_sha}`
- Seeds: train.seed {params.seed} (LoRA init, batch order); the split salt and base seed are in params.yaml

Data (md5, as `dvc.lock` records it for the format stage's outputs):

| file | md5 |
|---|---|
{data_rows}

## Results (validation split)

{val_section(metrics)}

{metrics['steps']} steps, {metrics['train_rows']} training rows, \
{metrics['train_supervised_tokens']} supervised tokens per epoch.

## Params (`train` section of params.yaml, less report-only knobs)

```yaml
{yaml.safe_dump(without_report_knobs(params), sort_keys=False).strip()}
```

## Library versions

| library | version |
|---|---|
{version_rows}
"""


def canonical_adapter_config(path: Path) -> None:
    """PEFT writes target_modules from a set, so its order changes with the process's hash seed; sort it
    so the same run gives the same adapter_config.json bytes (and the same DVC hash)."""
    config = json.loads(path.read_text())
    for key in ("target_modules", "target_parameters", "modules_to_save"):
        if isinstance(config.get(key), list):
            config[key] = sorted(config[key])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
