"""A hosted chat model (an OpenAI `ft:` model, or anything speaking the chat completions API) behind the
same calls as the local ChatModel (webtune.models.chat.Chat), so chat, evaluate and serve treat both
alike.

    hosted = HostedChat.connect("ft:gpt-4o-mini-2024-07-18:org:webtune:abc123", api_key=key,
                                base_model="gpt-4o-mini-2024-07-18")
    hosted.reply([conversation], Sampling(temperature=0, max_new_tokens=128))
    for piece in hosted.stream(conversation, Sampling()): ...
    answers = hosted.generate(rows, max_new_tokens=128, batch_size=8)   # greedy, as evaluate asks
    with hosted.base_only(): ...                                         # the model it was tuned from
    chat = load_chat("models/base", "models/adapter", api_key)           # either, as the folder says

`base_url` reaches any endpoint with the same API (Azure OpenAI's v1 endpoint, a local emulator, or
webtune's own `serve`). There is no loss here (can_score_loss is False): a hosted model returns text,
not logits over our tokens. Chat completions are safe to retry (nothing is created or billed twice by a
repeat), so the client keeps its default retries, which honour Retry-After on a 429.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from webtune import formats
from webtune.errors import UserError
from webtune.models import HOSTED_FILE, KEY_ENV, OPENAI_URL, read_hosted  # noqa: F401 -- re-exported: hosted things in one place
from webtune.models.chat import Answer, Sampling
from webtune.models.inference import ChatModel


class HostedError(UserError):
    """The hosted model refused or failed (the message says how, in one line)."""


class HostedChat:
    can_score_loss = False  # text comes back, not logits over the base's tokens

    def __init__(self, client, model: str, base_model: str | None = None):
        self.client, self.model, self.base_model = client, model, base_model
        self.tuned = model  # self.model is the base's inside base_only

    @classmethod
    def connect(cls, model: str, *, api_key: str, base_url: str | None = None,
                base_model: str | None = None) -> "HostedChat":
        import openai

        return cls(openai.OpenAI(api_key=api_key, base_url=base_url or None), model, base_model)

    @property
    def hosted_models(self) -> dict:
        """The host's ids of the two models compared (metrics/evaluate.json's `hosted`)."""
        return {"base": self.base_model, "adapter": self.tuned}

    @contextlib.contextmanager
    def base_only(self):
        """The base's answers: the same calls to the model the fine-tune started from."""
        if self.base_model is None:
            raise HostedError(f"{self.tuned}: no base model to compare with (connect(base_model=...))")
        self.model = self.base_model
        try:
            yield
        finally:
            self.model = self.tuned

    def assistant_loss(self, *args, **kwargs):
        raise HostedError(f"{self.model}: no loss: a hosted model returns text, not logits over the base's "
                          "tokens (can_score_loss is False)")

    row_losses = text_nll = assistant_loss  # per-row losses and bits per byte need logits too

    def generate(self, rows: Sequence[Sequence[dict]], max_new_tokens: int, batch_size: int,
                 progress: Callable[[str], None] | None = None, *, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> list[Answer]:
        """Greedy answers (temperature 0) to each row's prompt (the row less its final answer), in row order.

        The chat completions API has neither transformers' repetition penalty nor its n-gram ban, so those
        two knobs are not sent (the samples report says how hosted answers were decoded).
        """
        greedy = Sampling(max_new_tokens=max_new_tokens, temperature=0)
        answers = []
        for start in range(0, len(rows), batch_size):
            answers += self.reply([formats.prompt_messages(m) for m in rows[start : start + batch_size]],
                                  greedy)
            if progress:
                progress(f"generated {len(answers)}/{len(rows)}")
        return answers

    def _request(self, conversation: Sequence[dict], sampling: Sampling) -> dict:
        if sampling.reasoning is not None:
            raise HostedError("reasoning effort is a gpt-oss feature; a hosted chat model does not take it")
        request = {"model": self.model, "messages": list(conversation), "max_tokens": sampling.max_new_tokens,
                   "temperature": sampling.temperature}
        if sampling.temperature > 0:
            request["top_p"] = sampling.top_p
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        return request

    def reply(self, conversations: Sequence[Sequence[dict]], sampling: Sampling) -> list[Answer]:
        answers = []
        for conversation in conversations:
            response = self._call(lambda c=conversation: self.client.chat.completions.create(
                **self._request(c, sampling)))
            choice = response.choices[0]
            tokens = response.usage.completion_tokens if response.usage else 0
            answers.append(Answer(choice.message.content or "", choice.finish_reason == "stop", tokens))
        return answers

    def stream(self, conversation: Sequence[dict], sampling: Sampling,
               done: Callable[[Answer], None] | None = None) -> Iterator[str]:
        stream = self._call(lambda: self.client.chat.completions.create(
            **self._request(conversation, sampling), stream=True))
        text, finish = [], None
        for event in stream:
            if not event.choices:
                continue
            piece = event.choices[0].delta.content or ""
            finish = event.choices[0].finish_reason or finish
            if piece:
                text.append(piece)
                yield piece
        if done is not None:
            done(Answer("".join(text), finish == "stop", 0))

    def _call(self, make):
        import openai

        try:
            return make()
        except openai.APIStatusError as e:
            message = (e.body or {}).get("message") if isinstance(e.body, dict) else None
            raise HostedError(f"{self.model}: HTTP {e.status_code}: {message or e.message}") from None
        except openai.APIConnectionError as e:
            raise HostedError(f"{self.model}: cannot reach the API ({type(e).__name__}: {e})") from None


def load_chat(base_dir: str | Path, adapter_dir: str | Path,
              api_key: Callable[[str], str]) -> "ChatModel | HostedChat":
    """The chat model an adapter folder names, able to answer as its base too (base_only).

    A local adapter: the base's weights with the adapter (ChatModel.load). A hosted fine-tune (hosted.json,
    written by train.backend openai): the `ft:` model paired with its base model, at the endpoint it was
    trained on. `api_key(model)` is asked only for a hosted one: the caller's main reads the secret.
    """
    record = read_hosted(adapter_dir)
    if record is None:
        return ChatModel.load(base_dir, adapter_dir)
    tuned = record["fine_tuned_model"]
    # OpenAI's own endpoint goes as None: the client's default, as for chat --hosted
    url = None if record["base_url"] == OPENAI_URL else record["base_url"]
    return HostedChat.connect(tuned, api_key=api_key(tuned), base_url=url, base_model=record["base_model"])
