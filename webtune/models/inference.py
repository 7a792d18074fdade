"""The chat model: one object that scores and answers, for evaluate, chat, serve and export alike.

    chat = ChatModel.load("models/base", "models/adapter")
    answers = chat.generate([messages, ...], max_new_tokens=128, batch_size=8, repetition_penalty=1.1)
    loss, n_tokens = chat.assistant_loss(rows, batch_size=8, channels=("final",), turns="all")
    with chat.base_only():          # the same weights with the adapter switched off
        ...
    replies = chat.reply([conversation, ...], Sampling(max_new_tokens=64))   # conversations end with the user
    for piece in chat.stream(conversation, Sampling()): print(piece, end="")

Prompts, stops and supervised tokens all come from the base's chat format, so every caller agrees on
where an answer starts, which tokens count and when generation stops. ChatModel implements `Chat`, the
interface a hosted model (webtune.models.hosted.HostedChat) shares with it (webtune.models.chat, with
Sampling and Answer); what one cannot compute it declares (`can_score_loss`).
"""

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from webtune import formats
from webtune.formats import ChatFormat
from webtune.models import check_adapter_dir, load_adapter, load_base
from webtune.models.chat import Answer, Sampling, with_reasoning

IGNORE = -100  # label of a token that is not scored (torch's cross_entropy default ignore_index)


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


def conversation_ids(tokenizer, chat_format: ChatFormat, messages: Sequence[dict],
                     reasoning: str | None = None) -> list[int]:
    """A conversation ending with the user's turn, opened for the assistant's answer. The template
    neutralises every message's content, so no message can open or close a turn."""
    if reasoning is not None:
        messages = with_reasoning(chat_format.name, messages, reasoning)
    out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                        return_dict=True)
    return list(out["input_ids"])


class ChatModel:
    can_score_loss = True
    hosted_models = None  # local weights: the base and adapter folders name them

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

    @property
    def context_length(self) -> int:
        """The most tokens a prompt and its answer may hold together."""
        return self.model.config.max_position_embeddings

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
        return self.conversation_ids(formats.prompt_messages(messages))

    def conversation_ids(self, messages: Sequence[dict], reasoning: str | None = None) -> list[int]:
        return conversation_ids(self.tokenizer, self.chat_format, messages, reasoning)

    @torch.no_grad()
    def reply(self, conversations: Sequence[Sequence[dict]], sampling: Sampling) -> list[Answer]:
        """One answer per conversation, generated together in one left-padded batch (one request each
        when they are served: batching never mixes two requests' tokens, every row is its own)."""
        self.model.eval()
        stops, pad_id = self.stop_ids(), self.tokenizer.pad_token_id
        prompts = [self.conversation_ids(m, sampling.reasoning) for m in conversations]
        ids, attention = pad(prompts, pad_id, "left")
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = self.model.generate(
            input_ids=ids.to(self.model.device), attention_mask=attention.to(self.model.device),
            max_new_tokens=sampling.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
            **sampling.generate_kwargs())
        return [cut_answer(self.tokenizer, new, stops) for new in out[:, ids.shape[1]:].cpu().tolist()]

    def stream(self, conversation: Sequence[dict], sampling: Sampling,
               done: Callable[[Answer], None] | None = None) -> Iterator[str]:
        """The answer's text as it is generated, piece by piece (transformers' TextIteratorStreamer); `done`
        gets the whole Answer at the end (tokens, whether it stopped)."""
        from transformers import TextIteratorStreamer

        self.model.eval()
        stops, pad_id = self.stop_ids(), self.tokenizer.pad_token_id
        ids = torch.tensor([self.conversation_ids(conversation, sampling.reasoning)], dtype=torch.long)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def run():
            try:
                if sampling.seed is not None:
                    torch.manual_seed(sampling.seed)
                with torch.no_grad():
                    result["out"] = self.model.generate(
                        input_ids=ids.to(self.model.device),
                        attention_mask=torch.ones_like(ids).to(self.model.device),
                        max_new_tokens=sampling.max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
                        streamer=streamer, **sampling.generate_kwargs())
            except BaseException as e:  # re-raised on the caller's thread below
                result["error"] = e
                streamer.end()

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if "error" in result:
            raise result["error"]
        if done is not None:
            done(cut_answer(self.tokenizer, result["out"][0, ids.shape[1]:].cpu().tolist(), stops))

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

    def assistant_loss(self, rows: Sequence[Sequence[dict]], batch_size: int, channels: Sequence[str],
                       turns: str) -> tuple[float, int]:
        """(token-weighted mean cross-entropy on supervised tokens, number of those tokens) over `rows`:
        the sum of row_losses over the sum of their tokens, so the result does not depend on batch_size."""
        sums = self.row_losses(rows, batch_size, channels, turns)
        n_tokens = sum(n for _, n in sums)
        if n_tokens == 0:
            raise ValueError("no supervised tokens in the rows: nothing to score")
        return sum(nll for nll, _ in sums) / n_tokens, n_tokens

    def row_losses(self, rows: Sequence[Sequence[dict]], batch_size: int, channels: Sequence[str],
                   turns: str) -> list[tuple[float, int]]:
        """Per row, in order: (summed cross-entropy in nats on its supervised tokens, their number)."""
        return self._nll_sums([self.labels(m, channels, turns) for m in rows], batch_size)

    def text_nll(self, texts: Sequence[str], window: int, batch_size: int) -> list[tuple[float, int]]:
        """Per text, in order: (summed cross-entropy in nats of every token of the text as plain language
        modelling, no chat format; the number of tokens).

        lm-eval's loglikelihood_rolling: the text is cut into disjoint windows of `window` tokens, each
        given the previous window's last token as context (the first, the tokenizer's BOS or EOS), so
        every token is predicted exactly once whatever the text's length.
        """
        start = self.tokenizer.bos_token_id
        start = self.tokenizer.eos_token_id if start is None else start
        pieces, owner = [], []
        for i, text in enumerate(texts):
            ids = [start, *self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]]
            for at in range(0, len(ids) - 1, window):
                piece = ids[at : at + window + 1]
                pieces.append((piece, [IGNORE, *piece[1:]]))
                owner.append(i)
        sums = [(0.0, 0)] * len(texts)
        for i, (nll, n) in zip(owner, self._nll_sums(pieces, batch_size), strict=True):
            sums[i] = (sums[i][0] + nll, sums[i][1] + n)
        return sums

    @torch.no_grad()
    def _nll_sums(self, encoded: Sequence[tuple[list[int], list[int]]],
                  batch_size: int) -> list[tuple[float, int]]:
        """Per (ids, labels), in order: summed cross-entropy (float64) of the labelled tokens and their count.

        Sequences are batched by length (less padding). Right padding: a real token never attends to a pad,
        and pads are never scored."""
        self.model.eval()
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        out: list[tuple[float, int]] = [(0.0, 0)] * len(encoded)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            ids, attention = pad([encoded[i][0] for i in batch], self.tokenizer.pad_token_id, "right")
            labels, _ = pad([encoded[i][1] for i in batch], IGNORE, "right")
            logits = self.model(input_ids=ids.to(self.model.device),
                                attention_mask=attention.to(self.model.device), use_cache=False).logits.cpu()
            # Position t predicts token t + 1.
            targets = labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(  # flattened: (tokens, vocab) is the fast layout
                logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                reduction="none").view(targets.shape)
            nll, counted = per_token.double().sum(1), (targets != IGNORE).sum(1)
            for j, i in enumerate(batch):
                out[i] = (nll[j].item(), int(counted[j]))
        return out
