"""What a chat model is asked and what it answers, the same for a local and a hosted one.

    sampling = Sampling(max_new_tokens=64, temperature=0)   # how chat and serve draw an answer
    check_conversation(messages)                            # ValueError naming the bad message's index
    answers: list[Answer] = chat.reply([messages], sampling)

`Chat` is the interface evaluate, chat and serve call: webtune.models.inference.ChatModel (local weights)
and webtune.models.hosted.HostedChat both implement it. Nothing here loads torch or a model.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

from webtune import formats

REASONING_EFFORTS = ("low", "medium", "high")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How chat and serve draw an answer (evaluate decodes greedily, its own way).

    The defaults are the original Unsloth recipe's test settings (temperature 0.7, top_p 0.9);
    temperature 0 is greedy.
    `reasoning` is gpt-oss's reasoning effort (low / medium / high), written into the system turn the way
    gpt-oss's own template does; formats without reasoning refuse it.
    """

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int | None = None  # None: a fresh draw each time; an int: the same answer every time
    reasoning: str | None = None

    def problems(self) -> str | None:
        if self.max_new_tokens < 1:
            return f"max_new_tokens must be at least 1, got {self.max_new_tokens}"
        if not 0 <= self.temperature <= 2:
            return f"temperature must be between 0 and 2, got {self.temperature}"
        if not 0 < self.top_p <= 1:
            return f"top_p must be in (0, 1], got {self.top_p}"
        if self.reasoning is not None and self.reasoning not in REASONING_EFFORTS:
            return f"reasoning must be one of {', '.join(REASONING_EFFORTS)}, got {self.reasoning!r}"
        return None

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p}


def check_conversation(messages: Sequence[dict]) -> None:
    """ValueError naming the index of the first problem in a conversation to answer (ending with the user)."""
    if not messages:
        raise ValueError("messages is empty: send at least one user message")
    if messages[-1].get("role") != "user":
        raise ValueError(f"messages[{len(messages) - 1}]: the last message must be the user's, "
                         f"got {messages[-1].get('role')!r}")
    formats.validate_messages([*messages, {"role": "assistant", "content": ""}])


class Answer(NamedTuple):
    text: str  # the new tokens up to the first stop token, decoded without special tokens
    stopped: bool  # a stop token came before the max_new_tokens budget ran out
    tokens: int  # generated tokens up to the first stop token, that token excluded


class Chat(Protocol):
    """What evaluate, chat and serve call on a chat model, local (ChatModel) or hosted (HostedChat)."""

    can_score_loss: bool  # the three losses work (a hosted model returns text, not logits)
    hosted_models: dict | None  # the host's ids of the base and the adapter model; None: local weights

    def base_only(self) -> contextlib.AbstractContextManager: ...

    def generate(self, rows: Sequence[Sequence[dict]], max_new_tokens: int, batch_size: int,
                 progress: Callable[[str], None] | None = None, *, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> list[Answer]: ...

    def assistant_loss(self, rows: Sequence[Sequence[dict]], batch_size: int, channels: Sequence[str],
                       turns: str) -> tuple[float, int]: ...

    def row_losses(self, rows: Sequence[Sequence[dict]], batch_size: int, channels: Sequence[str],
                   turns: str) -> list[tuple[float, int]]: ...

    def text_nll(self, texts: Sequence[str], window: int, batch_size: int) -> list[tuple[float, int]]: ...

    def reply(self, conversations: Sequence[Sequence[dict]], sampling: Sampling) -> list[Answer]: ...

    def stream(self, conversation: Sequence[dict], sampling: Sampling,
               done: Callable[[Answer], None] | None = None) -> Iterator[str]: ...


def with_reasoning(format_name: str, messages: Sequence[dict], effort: str) -> list[dict]:
    """gpt-oss's reasoning effort as its own template writes it: a "Reasoning: <effort>" line in the system
    turn (added in front of the conversation's own system text, or as the system turn)."""
    if format_name != "harmony":
        raise ValueError(f"reasoning effort is a gpt-oss (harmony) feature; this model's format is "
                         f"{format_name}")
    if effort not in REASONING_EFFORTS:
        raise ValueError(f"reasoning must be one of {', '.join(REASONING_EFFORTS)}, got {effort!r}")
    messages = list(messages)
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        content = f"Reasoning: {effort}\n\n{first['content']}"
        return [{"role": first["role"], "content": content}, *messages[1:]]
    return [{"role": "system", "content": f"Reasoning: {effort}"}, *messages]
