"""Library noise kept out of what stages and commands print: warnings we cannot fix, and progress bars where
nobody watches them.

    with quiet.ignoring(quiet.PEFT_READS_IS_GRADIENT_CHECKPOINTING):
        model = PeftModel.from_pretrained(base, adapter_dir)
    quiet.bars_for_terminal()    # before loading or saving weights
    with quiet.tqdm_for_terminal("transformers.modeling_gguf_pytorch_utils"):   # a library's own tqdm
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)

A warning is ignored only around the call that raises it, by its exact message, category and the module
that warns, and each entry names the library versions it was seen with: once a library fixes it, the filter
matches nothing and can go. Warnings of our own calls are fixed at the call instead. Progress bars belong to
a terminal: with stderr a file or a pipe (a dvc log, a script reading `chat --once`) they are turned off.
"""

import contextlib
import functools
import importlib
import sys
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Noise:
    """One library warning: what `warnings.filterwarnings` matches."""

    message: str  # regex matched against the start of the warning's text
    category: type[Warning]
    module: str  # regex matched against the whole name of the module that calls warnings.warn


# peft 0.21.2 (PeftModel.__init__ and SFTTrainer's wrapping through it) reads `is_gradient_checkpointing`,
# which transformers 5.23.0 deprecated in favour of `is_activation_checkpointing`; the property warns
# from transformers.modeling_utils on every adapter load and every trainer built.
PEFT_READS_IS_GRADIENT_CHECKPOINTING = Noise(
    message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning,
    module=r"transformers\.modeling_utils")


@contextlib.contextmanager
def ignoring(*noises: Noise):
    """Ignore exactly `noises` inside the block (the filters before it come back after it)."""
    with warnings.catch_warnings():
        for noise in noises:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category,
                                    module=noise.module)
        yield


def bars_for_terminal(stream=None) -> bool:
    """Turn transformers' and huggingface_hub's progress bars (one switch in transformers) off unless
    `stream` (default: stderr, where they draw) is a terminal. Returns whether bars stay on."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        return True
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    return False


@contextlib.contextmanager
def tqdm_for_terminal(module: str, stream=None):
    """Inside the block, the tqdm bars that `module` draws itself are off unless `stream` (default: stderr)
    is a terminal.

    For bars past transformers' switch: transformers 5.23.0's GGUF reader (modeling_gguf_pytorch_utils,
    "Converting and de-quantizing GGUF tensors...") calls `tqdm.auto.tqdm` directly, and tqdm has no
    global switch (it reads TQDM_DISABLE once, when it is first imported). The module's `tqdm` name is
    swapped for one with disable=True and put back after.
    """
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        yield
        return
    library = importlib.import_module(module)
    shipped = library.tqdm
    library.tqdm = functools.partial(shipped, disable=True)
    try:
        yield
    finally:
        library.tqdm = shipped
