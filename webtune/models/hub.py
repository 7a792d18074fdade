"""A Hugging Face Hub base: pinned to an exact commit, its tokenizer saved, its chat format detected.

Nothing but the tokenizer is downloaded here: the base stage resolves `base.revision` to the commit sha
(so later stages load exactly that commit) and saves the tokenizer of that commit into the base
folder, after checking it fits one of the known chat formats. A model whose tokenizer fits none is
refused here, with one line naming the model and the formats known, never later with a traceback.
"""

import json
import re
from collections.abc import Callable
from pathlib import Path

from webtune import formats, io
from webtune.errors import one_line
from webtune.models import INFO_FILE, MODEL_DIR, TINY, TOKENIZER_DIR, ModelError, save_tokenizer

_SHA = re.compile(r"[0-9a-f]{40}")


class BaseResolveError(ModelError):
    """A hub base could not be resolved to a commit sha (offline, gated, missing, bad revision)."""


def resolve_revision(model_id: str, revision: str, model_info: Callable | None = None) -> str:
    """The commit sha that `revision` (branch, tag or sha) of hub repo `model_id` points to.

    Always asks the hub, even for a 40-hex revision: a sha that does not exist in the repo should fail
    here, not in train. `model_info` is injectable for tests (default: HfApi().model_info).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    if model_info is None:
        model_info = HfApi().model_info
    pinned = bool(_SHA.fullmatch(revision))
    try:
        sha = model_info(model_id, revision=revision).sha
    except (OSError, HTTPError) as e:  # offline, DNS, 401/403 gated, 404 repo or revision
        raise BaseResolveError(
            f"cannot resolve base model {model_id!r} at revision {revision!r} on the Hugging Face Hub "
            f"({type(e).__name__}: {one_line(e)}). To fix: run with network access (unset HF_HUB_OFFLINE); "
            f"set HF_TOKEN if the repo is gated or private; check the model id; pin base.revision in "
            f"params.yaml to a 40-hex commit sha. "
            + ("base.revision is already a sha, but it is still verified against the hub. " if pinned else "")
            + f"Offline, use base.model: {TINY}."
        ) from e
    if not sha or not _SHA.fullmatch(sha):
        raise BaseResolveError(
            f"hub returned no commit sha for {model_id!r} at revision {revision!r} (got {sha!r})"
        )
    if pinned and sha != revision:
        raise BaseResolveError(f"{model_id!r}: revision {revision} resolved to a different commit {sha}")
    return sha


def hub_tokenizer(model_id: str, sha: str):
    """The tokenizer of `model_id` at commit `sha` (downloaded, or from the hub cache)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_id, revision=sha)
    except OSError as e:
        raise BaseResolveError(f"cannot load the tokenizer of {model_id!r} at {sha}: "
                               f"{one_line(e)}") from None


def save_hub_base(model_id: str, revision: str, out: str | Path, *, model_info: Callable | None = None,
                  load_tokenizer: Callable | None = None) -> dict:
    """Pin `model_id` at `revision`, check and save its tokenizer into the base folder `out`; return
    base.json. `load_tokenizer` is injectable for tests (default: hub_tokenizer, looked up at call time).
    """
    sha = resolve_revision(model_id, revision, model_info)
    tokenizer = (load_tokenizer or hub_tokenizer)(model_id, sha)
    fmt = formats.detect(tokenizer)
    if fmt is None:
        raise ModelError(f"{model_id} at {sha[:12]}: its tokenizer fits no known chat format "
                         f"(known: {', '.join(formats.FORMATS)}); its special tokens do not include every "
                         "control token of any of them")
    info = {"model": model_id, "kind": "hub", "revision": sha}
    out = Path(out)
    with io.atomic_dir(out / TOKENIZER_DIR) as tmp:
        save_tokenizer(tokenizer, fmt, tmp)
    with io.atomic_dir(out / MODEL_DIR) as tmp:
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info | {"chat_format": fmt.name}
