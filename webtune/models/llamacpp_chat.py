"""A GGUF model answering through llama.cpp (llama-cpp-python): what `serve --engine llamacpp` runs.

    chat = LlamaCppChat.load("exports/gguf/model.gguf", "models/base", threads=2)
    chat.reply([conversation], Sampling(max_new_tokens=64, temperature=0))

Prompts, stops and answers are webtune's, not llama.cpp's: the prompt is the base tokenizer's chat
template (token ids handed to llama.cpp, so both engines see the same tokens), generation ends at the
first of the chat format's stop tokens, and the answer is decoded by the same tokenizer as the hf
engine's (webtune.models.inference: conversation_ids, cut_answer). llama.cpp runs one sequence at a
time here, so serve queues requests for it rather than batching them.

gguf_for(base, adapter, quant) makes the GGUF of the current adapter on the fly (webtune.cli.export's
merge, webtune.models.to_gguf), cached under .webtune/gguf/ by the hash of the base, the adapter and
the quant type, so a restart with the same adapter does not export again.
"""

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from webtune.errors import UserError, one_line
from webtune.models import load_tokenizer
from webtune.models.chat import Answer, Sampling
from webtune.models.inference import conversation_ids, cut_answer
from webtune.models.packaged import file_sha256

CACHE = Path(".webtune/gguf")  # git-ignored; relative to where serve runs (the project)
INSTALL = "pip install 'webtune[llamacpp]'"


class LlamaCppChat:
    can_score_loss = False  # llama.cpp returns tokens here, not the logits the losses need
    hosted_models = None

    def __init__(self, llm, tokenizer, chat_format):
        self.llm, self.tokenizer, self.chat_format = llm, tokenizer, chat_format
        self.stops = tokenizer.convert_tokens_to_ids(list(chat_format.stop_tokens))

    @classmethod
    def load(cls, gguf: str | Path, base_dir: str | Path, threads: int = 0, context: int = 4096):
        try:
            import llama_cpp
        except ImportError:
            raise UserError(f"--engine llamacpp needs llama-cpp-python: {INSTALL}") from None
        if not Path(gguf).is_file():
            raise UserError(f"{gguf}: no such GGUF file (webtune.cli.export --format gguf writes one)")
        tokenizer, fmt = load_tokenizer(Path(base_dir) / "tokenizer")
        try:
            llm = llama_cpp.Llama(str(gguf), n_ctx=context, n_threads=threads or None,
                                  n_threads_batch=threads or None, verbose=False)
        except ValueError as e:  # llama-cpp-python's one error for a file llama.cpp cannot load
            raise UserError(f"{gguf}: llama.cpp cannot load it: {one_line(e)}") from None
        return cls(llm, tokenizer, fmt)

    @property
    def context_length(self) -> int:
        return self.llm.n_ctx()

    def conversation_ids(self, messages: Sequence[dict], reasoning: str | None = None) -> list[int]:
        return conversation_ids(self.tokenizer, self.chat_format, messages, reasoning)

    def tokens(self, conversation: Sequence[dict], sampling: Sampling) -> Iterator[int]:
        """The answer's token ids up to the first stop id (included) or the budget."""
        prompt = self.conversation_ids(conversation, sampling.reasoning)
        if len(prompt) + sampling.max_new_tokens > self.context_length:  # serve refuses it first (400)
            raise ValueError(f"the prompt ({len(prompt)} tokens) and max_tokens ({sampling.max_new_tokens}) "
                             f"do not fit the {self.context_length}-token context")
        self.llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
        greedy = sampling.temperature == 0
        # top_k 50 and no min_p: transformers' defaults, which the hf engine samples with
        draws = self.llm.generate(prompt, temp=0.0 if greedy else sampling.temperature,
                                  top_p=1.0 if greedy else sampling.top_p, top_k=50, min_p=0.0,
                                  repeat_penalty=1.0)
        for n, token in enumerate(draws, start=1):
            yield token
            if token in self.stops or n >= sampling.max_new_tokens:
                return

    def reply(self, conversations: Sequence[Sequence[dict]], sampling: Sampling) -> list[Answer]:
        return [cut_answer(self.tokenizer, list(self.tokens(c, sampling)), self.stops) for c in conversations]

    def stream(self, conversation: Sequence[dict], sampling: Sampling,
               done: Callable[[Answer], None] | None = None) -> Iterator[str]:
        """The answer's text as tokens come; a piece is held back while it ends in a partial character."""
        ids, sent = [], ""
        for token in self.tokens(conversation, sampling):
            if token in self.stops:
                ids.append(token)
                break
            ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if len(text) > len(sent) and not text.endswith("\ufffd"):
                yield text[len(sent):]
                sent = text
        final = cut_answer(self.tokenizer, ids, self.stops)
        if len(final.text) > len(sent):
            yield final.text[len(sent):]
        if done is not None:
            done(final)


def _tree_hash(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return hashlib.sha256("".join(f"{p.relative_to(folder)}\0{file_sha256(p)}\n" for p in files).encode()
                          ).hexdigest()


def gguf_for(base_dir: Path, adapter_dir: Path | None, quant: str, progress=None) -> Path:
    """The GGUF of base + adapter in `quant`, from the cache or exported now."""
    from webtune.cli.export import export

    key = hashlib.sha256(f"{_tree_hash(Path(base_dir))} {adapter_dir and _tree_hash(Path(adapter_dir))} "
                         f"{quant}".encode()).hexdigest()[:16]
    folder = CACHE / key
    if not (folder / "model.gguf").is_file():
        if progress:
            progress(f"serve: exporting the adapter as GGUF ({quant}) to {folder} (once per adapter)")
        export(Path(base_dir), adapter_dir, folder, "float32", "gguf", quant)
    return folder / "model.gguf"
