"""The ChatML chat format of SmolLM2 and Qwen: the single definition of how it renders, tokenizes and stops.

    <|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\nQ<|im_end|>\\n<|im_start|>assistant\\nA<|im_end|>\\n

The Jinja template below is what tokenizers carry (`tokenizer.chat_template`); `render` is the same thing
in Python for the data stages; a test asserts they agree. `{% generation %}` wraps the assistant answer
*and* its `<|im_end|>` (not the newline after it): those are exactly the supervised tokens, so the model
learns to stop. Content is neutralised, then trimmed of leading and trailing whitespace (Jinja's `trim`
is Python's `str.strip`): the newline ending a header never merges with a content token, so the supervised
span starts on a token boundary. ChatML has no developer role: a developer turn renders as system. There
are no channels: every assistant turn is `final`, so `train.channels: [final]` fits every format.

Unlike SmolLM2's own template, ours never inserts a default system prompt ("You are a helpful AI assistant
named SmolLM..."): a row holds the text it was trained on and nothing hidden; a system prompt, if any, is
in the data.
"""

import re
from collections.abc import Sequence

from webtune.formats import NEUTRAL_CLOSE, NEUTRAL_OPEN, ChatFormat, neutralise, system_or_role

IM_START, IM_END, ENDOFTEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # SmolLM2's ids 0..2
ASSISTANT_CHANNEL = "final"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    f"{{%- set content = message['content'] | replace('<|', '{NEUTRAL_OPEN}')"
    f" | replace('|>', '{NEUTRAL_CLOSE}') | trim -%}}"
    "{%- set role = 'system' if message['role'] == 'developer' else message['role'] -%}"
    "<|im_start|>{{ role }}{{ '\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ content }}<|im_end|>{%- endgeneration -%}{{ '\\n' }}"
    "{%- else -%}"
    "{{ content }}<|im_end|>{{ '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ '\\n' }}{%- endif -%}"
)

SPECIALS_PER_TURN = 2  # <|im_start|> and <|im_end|>, whatever the role


class ChatML(ChatFormat):
    name = "chatml"
    control_tokens = SPECIAL_TOKENS
    # <|im_end|> ends every turn; a base pretrained on documents ends them with <|endoftext|>.
    stop_tokens = (IM_END, ENDOFTEXT)
    pad_token = ENDOFTEXT
    channels = (ASSISTANT_CHANNEL,)
    chat_template = CHAT_TEMPLATE

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        parts = [f"{IM_START}{system_or_role(m)}\n{neutralise(m['content']).strip()}{IM_END}\n"
                 for m in messages]
        if add_generation_prompt:
            parts.append(f"{IM_START}assistant\n")
        return "".join(parts)

    def expected_special_ids(self, messages: Sequence[dict]) -> int:
        return SPECIALS_PER_TURN * len(messages)

    def assistant_spans(self, tokenizer, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        """`<|im_start|>` opens a turn; its header runs to the first token holding the newline (the role is
        what precedes it); the body runs to the next `<|im_end|>` (inclusive: the model must learn to stop).
        An unterminated turn runs to the end."""
        start, end = tokenizer.convert_tokens_to_ids([IM_START, IM_END])
        spans, i, n = [], 0, len(ids)
        while i < n:
            if ids[i] != start:
                i += 1
                continue
            newline = i + 1
            while newline < n and ids[newline] not in (start, end) and "\n" not in tokenizer.decode(
                    ids[newline : newline + 1]):
                newline += 1
            if newline >= n or ids[newline] in (start, end):
                i = newline
                continue
            role = tokenizer.decode(ids[i + 1 : newline + 1]).split("\n")[0].strip()
            body = newline + 1
            stop = body
            while stop < n and ids[stop] not in (end, start):
                stop += 1
            closed = stop < n and ids[stop] == end
            if role == "assistant":
                spans.append((ASSISTANT_CHANNEL, body, stop + 1 if closed else stop))
            i = stop + 1 if closed else stop
        return spans

    def row_regex(self) -> str:
        """An optional system turn, user/assistant exchanges, ending in the supervised final answer, its
        `<|im_end|>` and the newline after it. Content holds no `<|` or `|>` (render neutralises them).
        Negated classes span newlines, so no DOTALL flag is needed; \\Z forbids trailing text."""
        s, e = re.escape(IM_START), re.escape(IM_END)
        content = r"(?:[^<|]|<(?!\|)|\|(?!>))*"
        user = f"{s}user\\n{content}{e}\\n"
        answer = f"{s}assistant\\n{content}{e}\\n"
        return f"^(?:{s}system\\n{content}{e}\\n)?(?:{user}{answer})*{user}{answer}\\Z"


FORMAT = ChatML()
