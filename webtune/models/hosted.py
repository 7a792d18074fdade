"""A hosted chat model (an OpenAI `ft:` model, or anything speaking the chat completions API) behind the
same `reply` / `stream` calls as the local ChatModel, so chat and evaluate treat both alike.

    hosted = HostedChat.connect("ft:gpt-4o-mini-2024-07-18:org:webtune:abc123", api_key=key)
    hosted.reply([conversation], Sampling(temperature=0, max_new_tokens=128))
    for piece in hosted.stream(conversation, Sampling()): ...

`base_url` reaches any endpoint with the same API (Azure OpenAI's v1 endpoint, a local emulator, or
webtune's own `serve`). There is no loss here: a hosted model returns text, not logits over our tokens.
Chat completions are safe to retry (nothing is created or billed twice by a repeat), so the client keeps
its default retries, which honour Retry-After on a 429.
"""

from collections.abc import Callable, Iterator, Sequence

from webtune.errors import UserError
from webtune.models import HOSTED_FILE, KEY_ENV, read_hosted  # noqa: F401 -- re-exported: hosted things in one place
from webtune.models.inference import Answer, Sampling


class HostedError(UserError):
    """The hosted model refused or failed (the message says how, in one line)."""


class HostedChat:
    def __init__(self, client, model: str):
        self.client, self.model = client, model

    @classmethod
    def connect(cls, model: str, *, api_key: str, base_url: str | None = None) -> "HostedChat":
        import openai

        return cls(openai.OpenAI(api_key=api_key, base_url=base_url or None), model)

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
