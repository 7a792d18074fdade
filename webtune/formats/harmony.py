"""The harmony chat format of gpt-oss: the single definition of how it renders, tokenizes and stops.

    <|start|>system<|message|>S<|end|><|start|>user<|message|>Q<|end|><|start|>assistant<|channel|>final<|message|>A<|return|>

The Jinja template below is what tokenizers carry (`tokenizer.chat_template`); `render` is the same thing
in Python for the data stages (no tokenizer needed, and fast); a test asserts they agree. `{% generation %}`
wraps the assistant answer *and* its `<|return|>`: those are exactly the supervised tokens, so the model
learns to stop. Content is neutralised before rendering, so the special ids appear only where the
structure puts them.
"""

import re
from collections.abc import Sequence

from webtune.formats import NEUTRAL_CLOSE, NEUTRAL_OPEN, ChatFormat, neutralise

START, END, MESSAGE, CHANNEL, RETURN, ENDOFTEXT = (
    "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|endoftext|>",
)
# In this order they are ids 0..5 of the tiny base's tokenizer (webtune.models.tiny_tokenizer).
SPECIAL_TOKENS = (ENDOFTEXT, START, END, MESSAGE, CHANNEL, RETURN)
ASSISTANT_CHANNEL = "final"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    f"{{%- set content = message['content'] | replace('<|', '{NEUTRAL_OPEN}')"
    f" | replace('|>', '{NEUTRAL_CLOSE}') -%}}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|start|>assistant<|channel|>final<|message|>"
    "{%- generation -%}{{ content }}{{ '<|return|>' if loop.last else '<|end|>' }}{%- endgeneration -%}"
    "{%- else -%}"
    "<|start|>{{ message['role'] }}<|message|>{{ content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant<|channel|>final<|message|>{%- endif -%}"
)

# Special ids per rendered turn: system/user = start, message, end;
# assistant = start, channel, message, return (or end when it is not the last turn).
SPECIALS_PER_TURN = {"system": 3, "developer": 3, "user": 3, "assistant": 4}


class Harmony(ChatFormat):
    name = "harmony"
    control_tokens = SPECIAL_TOKENS
    # <|return|> ends a final answer and <|end|> any message; a base warmed up on documents ends them
    # with <|endoftext|>.
    stop_tokens = (RETURN, END, ENDOFTEXT)
    pad_token = ENDOFTEXT
    channels = (ASSISTANT_CHANNEL, "analysis", "commentary")
    chat_template = CHAT_TEMPLATE

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        parts = []
        for i, m in enumerate(messages):
            content = neutralise(m["content"])
            if m["role"] == "assistant":
                stop = RETURN if i == len(messages) - 1 else END
                parts.append(f"{START}assistant{CHANNEL}{ASSISTANT_CHANNEL}{MESSAGE}{content}{stop}")
            else:
                parts.append(f"{START}{m['role']}{MESSAGE}{content}{END}")
        if add_generation_prompt:
            parts.append(f"{START}assistant{CHANNEL}{ASSISTANT_CHANNEL}{MESSAGE}")
        return "".join(parts)

    def expected_special_ids(self, messages: Sequence[dict]) -> int:
        return sum(SPECIALS_PER_TURN[m["role"]] for m in messages)

    def assistant_spans(self, tokenizer, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        """`<|start|>assistant<|channel|>C<|message|>` opens a turn and the next `<|return|>` or `<|end|>`
        closes it (inclusive: the model must learn to stop). An unterminated turn runs to the end."""
        start, channel, message, end, ret = tokenizer.convert_tokens_to_ids([START, CHANNEL, MESSAGE, END,
                                                                             RETURN])
        spans, i, n = [], 0, len(ids)
        while i < n:
            if ids[i] != start:
                i += 1
                continue
            header_end = i + 1
            while header_end < n and ids[header_end] not in (channel, message, start):
                header_end += 1
            role = tokenizer.decode(ids[i + 1 : header_end]).strip()
            chan = ""
            if header_end < n and ids[header_end] == channel:
                chan_end = header_end + 1
                while chan_end < n and ids[chan_end] not in (message, start):
                    chan_end += 1
                chan = tokenizer.decode(ids[header_end + 1 : chan_end]).strip()
                header_end = chan_end
            if header_end >= n or ids[header_end] != message:
                i = header_end
                continue
            body = header_end + 1
            stop = body
            while stop < n and ids[stop] not in (end, ret, start):
                stop += 1
            closed = stop < n and ids[stop] in (end, ret)
            if role == "assistant":
                spans.append((chan, body, stop + 1 if closed else stop))
            i = stop + 1 if closed else stop
        return spans

    def row_regex(self) -> str:
        """An optional system/developer turn, user/assistant exchanges, ending in the supervised final answer
        and `<|return|>`. Content holds no `<|` or `|>` (render neutralises them). Negated classes span
        newlines, so no DOTALL flag is needed; \\Z forbids trailing text."""
        s, e, m, c, r = (re.escape(t) for t in (START, END, MESSAGE, CHANNEL, RETURN))
        content = r"(?:[^<|]|<(?!\|)|\|(?!>))*"
        user = f"{s}user{m}{content}{e}"
        answer = f"{s}assistant{c}{ASSISTANT_CHANNEL}{m}{content}"
        return f"^(?:{s}(?:system|developer){m}{content}{e})?(?:{user}{answer}{e})*{user}{answer}{r}\\Z"


FORMAT = Harmony()
