"""The chat model: one object that scores and answers, for evaluate today and chat/serve/export next.

    chat = ChatModel.load("models/base", "models/adapter")
    answers = chat.generate([messages, ...], max_new_tokens=128, batch_size=8, repetition_penalty=1.1)
    loss, n_tokens = chat.assistant_loss(rows, batch_size=8, channels=("final",), turns="all")
    with chat.base_only():          # the same weights with the adapter switched off
        ...

Prompts, stops and supervised tokens all come from the base's chat format, so every caller agrees on
where an answer starts, which tokens count and when generation stops.
"""

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from webtune import formats
from webtune.formats import ChatFormat
from webtune.models import check_adapter_dir, load_adapter, load_base

IGNORE = -100  # label of a token that is not scored (torch's cross_entropy default ignore_index)


class Answer(NamedTuple):
    text: str  # the new tokens up to the first stop token, decoded without special tokens
    stopped: bool  # a stop token came before the max_new_tokens budget ran out
    tokens: int  # generated tokens up to the first stop token, that token excluded


def pad(seqs: Sequence[Sequence[int]], value: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [batch, longest], attention mask) with `value` on the right or left of shorter rows."""
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        span = slice(0, len(s)) if side == "right" else slice(longest - len(s), longest)
        ids[i, span] = torch.tensor(s, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def cut_answer(tokenizer, new_ids: Sequence[int], stops: Sequence[int]) -> Answer:
    """The answer in a row of generated ids: everything before the first stop id.

    generate fills a row that has stopped with pad ids until the batch's longest row is done, so the
    length of a row says nothing; the first stop id does. A row with no stop id ran the whole budget.
    """
    end = next((i for i, t in enumerate(new_ids) if t in stops), None)
    kept = new_ids[:end]
    return Answer(tokenizer.decode(kept, skip_special_tokens=True), end is not None, len(kept))


class ChatModel:
    def __init__(self, model, tokenizer, chat_format: ChatFormat):
        self.model, self.tokenizer, self.chat_format = model, tokenizer, chat_format

    @classmethod
    def load(cls, base_dir: str | Path, adapter_dir: str | Path | None = None) -> "ChatModel":
        if adapter_dir is not None:  # a wrong folder fails before the base's weights load
            check_adapter_dir(adapter_dir)
        base = load_base(base_dir)
        model = load_adapter(base, adapter_dir) if adapter_dir is not None else base.model
        return cls(model, base.tokenizer, base.chat_format)

    @contextlib.contextmanager
    def base_only(self):
        """The base's numbers from the same PeftModel with its adapter disabled: one model in memory."""
        with (self.model.disable_adapter() if hasattr(self.model, "disable_adapter")
              else contextlib.nullcontext()):
            yield

    def stop_ids(self) -> list[int]:
        """The format's stop tokens and the model's own eos ids (a warmed-up base adds its end of
        document)."""
        ids = self.tokenizer.convert_tokens_to_ids(list(self.chat_format.stop_tokens))
        eos = self.model.generation_config.eos_token_id
        for i in [eos] if isinstance(eos, int) else eos or []:
            if i not in ids:
                ids.append(i)
        return ids

    def prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        """The row without its answer, ending where the format opens the assistant's turn."""
        out = self.tokenizer.apply_chat_template(
            formats.prompt_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(out["input_ids"])

    @torch.no_grad()
    def generate(self, rows: Sequence[Sequence[dict]], max_new_tokens: int, batch_size: int,
                 progress: Callable[[str], None] | None = None, *, repetition_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0) -> list[Answer]:
        """Greedy answers to each row's prompt (the row less its final answer), in row order.

        Batched with left padding: every prompt's last token sits in the last column, where generation
        continues; generate derives position ids from the attention mask, so a padded prompt is answered
        as if alone.

        Still greedy with either knob on (they reshape the logits, the top one is taken):
        `repetition_penalty` > 1 divides a positive logit (multiplies a negative one) of every token already
        in the row, prompt included (transformers skips the left pads); 1.0 is off.
        `no_repeat_ngram_size` n > 0 forbids any token that would repeat an n-gram of the row, prompt
        included (and, unlike the penalty, the left pads: a pad id is then banned in a padded row only);
        0 is off.
        """
        self.model.eval()
        stops, pad_id = self.stop_ids(), self.tokenizer.pad_token_id
        answers = []
        for start in range(0, len(rows), batch_size):
            ids, attention = pad([self.prompt_ids(m) for m in rows[start : start + batch_size]], pad_id,
                                 "left")
            out = self.model.generate(
                input_ids=ids.to(self.model.device), attention_mask=attention.to(self.model.device),
                do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                repetition_penalty=float(repetition_penalty), no_repeat_ngram_size=no_repeat_ngram_size)
            answers += [cut_answer(self.tokenizer, new, stops)
                        for new in out[:, ids.shape[1]:].cpu().tolist()]
            if progress:
                progress(f"generated {len(answers)}/{len(rows)}")
        return answers

    def labels(self, messages: Sequence[dict], channels: Sequence[str],
               turns: str) -> tuple[list[int], list[int]]:
        """(ids, labels): labels are the ids on supervised tokens and IGNORE elsewhere, as train sees them."""
        ids, mask = formats.encode(self.chat_format, self.tokenizer, messages, channels=channels, turns=turns)
        return ids, [i if m else IGNORE for i, m in zip(ids, mask, strict=True)]

    @torch.no_grad()
    def assistant_loss(self, rows: Sequence[Sequence[dict]], batch_size: int, channels: Sequence[str],
                       turns: str) -> tuple[float, int]:
        """(token-weighted mean cross-entropy on supervised tokens, number of those tokens) over `rows`.

        Per-token losses are summed in float64 over all rows and divided once by the token count, so the
        result does not depend on batch_size. Rows are batched by length (less padding); the sum does not
        care about order. Right padding: a real token never attends to a pad, and pads are never scored.
        """
        self.model.eval()
        encoded = sorted((self.labels(m, channels, turns) for m in rows), key=lambda e: len(e[0]))
        total, n_tokens = torch.zeros((), dtype=torch.float64), 0
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start : start + batch_size]
            ids, attention = pad([e[0] for e in batch], self.tokenizer.pad_token_id, "right")
            labels, _ = pad([e[1] for e in batch], IGNORE, "right")
            logits = self.model(input_ids=ids.to(self.model.device),
                                attention_mask=attention.to(self.model.device), use_cache=False).logits.cpu()
            # Position t predicts token t + 1.
            per_token = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                reduction="none")
            total += per_token.double().sum()
            n_tokens += int((labels[:, 1:] != IGNORE).sum())
        if n_tokens == 0:
            raise ValueError("no supervised tokens in the rows: nothing to score")
        return total.item() / n_tokens, n_tokens
