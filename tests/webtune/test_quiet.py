"""webtune.quiet: a library warning ignored only where it is named (message, category and module) and only
inside the block; progress bars off when stderr is not a terminal, on when it is."""

import io
import sys
import types
import warnings

import pytest
import tqdm
from transformers.utils import logging as transformers_logging

from webtune import quiet

PEFT_MESSAGE = ("`is_gradient_checkpointing` is deprecated and will be removed in v6. Use "
                "`is_activation_checkpointing` instead.")


def warn(message: str, category=FutureWarning, module: str = "transformers.modeling_utils") -> None:
    warnings.warn_explicit(message, category, "modeling_utils.py", 3303, module=module)


def caught_messages(action) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught]


def test_only_the_named_warning_is_ignored_and_only_inside_the_block():
    def inside():
        with quiet.ignoring(quiet.PEFT_READS_IS_GRADIENT_CHECKPOINTING):
            warn(PEFT_MESSAGE)  # ignored
            warn("`gradient_checkpointing` is deprecated")  # another message
            warn(PEFT_MESSAGE, category=DeprecationWarning)  # another category
            warn(PEFT_MESSAGE, module="webtune.models")  # warned by another module
        warn(PEFT_MESSAGE)  # after the block

    assert caught_messages(inside) == ["`gradient_checkpointing` is deprecated", PEFT_MESSAGE, PEFT_MESSAGE,
                                       PEFT_MESSAGE]


class Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture
def bars_restored():
    was = transformers_logging.is_progress_bar_enabled()
    transformers_logging.enable_progress_bar()
    yield
    (transformers_logging.enable_progress_bar if was else transformers_logging.disable_progress_bar)()


def test_transformers_bars_stay_on_a_terminal_and_go_off_for_a_file_or_pipe(bars_restored):
    assert quiet.bars_for_terminal(Stream(terminal=True)) is True
    assert transformers_logging.is_progress_bar_enabled()
    assert quiet.bars_for_terminal(Stream(terminal=False)) is False
    assert not transformers_logging.is_progress_bar_enabled()
    from huggingface_hub.utils import are_progress_bars_disabled

    assert are_progress_bars_disabled()  # the same switch turns huggingface_hub's off


@pytest.mark.parametrize("terminal", [False, True])
def test_a_librarys_own_tqdm_draws_on_a_terminal_only_and_is_put_back(monkeypatch, terminal):
    library = types.ModuleType("drawing_library")
    library.tqdm = tqdm.tqdm
    monkeypatch.setitem(sys.modules, "drawing_library", library)
    drawn = Stream(terminal=True)  # where the bar itself draws
    with quiet.tqdm_for_terminal("drawing_library", Stream(terminal)):
        assert list(library.tqdm(range(3), file=drawn, desc="bar")) == [0, 1, 2]
    assert ("bar: 100%" in drawn.getvalue()) is terminal
    assert library.tqdm is tqdm.tqdm
