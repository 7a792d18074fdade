"""The Llama-3 chat format: the single definition of how it renders, tokenizes and stops.

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\\n\\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\nA<|eot_id|>

The Jinja template below is what tokenizers carry (`tokenizer.chat_template`); `render` is the same thing
in Python for the data stages; a test asserts they agree. `<|begin_of_text|>` is template text, once at
the start: tokenization never adds special tokens (formats.token_ids, template_ids), so it is never
doubled. `{% generation %}` wraps the assistant answer *and* its `<|eot_id|>`: those are exactly the
supervised tokens, so the model learns to stop. Content is neutralised, then trimmed of leading and
trailing whitespace as Meta's template does (Jinja's `trim` is Python's `str.strip`): the blank line ending
a header never merges with a content token, so the supervised span starts on a token boundary. Llama-3 has
no developer role: a developer turn renders as system. There are no channels: every assistant turn is
`final`, so `train.channels: [final]` fits every format.

Unlike Meta's template, ours inserts no default system prompt and no "Cutting Knowledge Date" lines: a
row holds the text it was trained on and nothing hidden; a system prompt, if any, is in the data.
"""

import re
from collections.abc import Sequence

from webtune.formats import NEUTRAL_CLOSE, NEUTRAL_OPEN, ChatFormat, neutralise, system_or_role

BEGIN, END_OF_TEXT, HEADER, END_HEADER, EOT = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
)
SPECIAL_TOKENS = (BEGIN, END_OF_TEXT, HEADER, END_HEADER, EOT)
ASSISTANT_CHANNEL = "final"

CHAT_TEMPLATE = (
    "<|begin_of_text|>"
    "{%- for message in messages -%}"
    f"{{%- set content = message['content'] | replace('<|', '{NEUTRAL_OPEN}')"
    f" | replace('|>', '{NEUTRAL_CLOSE}') | trim -%}}"
    "{%- set role = 'system' if message['role'] == 'developer' else message['role'] -%}"
    "<|start_header_id|>{{ role }}<|end_header_id|>{{ '\\n\\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{ content }}<|eot_id|>{%- endgeneration -%}"
    "{%- else -%}"
    "{{ content }}<|eot_id|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>{{ '\\n\\n' }}{%- endif -%}"
)

# Special ids: <|begin_of_text|> once, then start_header, end_header and eot per turn, whatever the role.
SPECIALS_PER_TURN = 3


class Llama3(ChatFormat):
    name = "llama3"
    control_tokens = SPECIAL_TOKENS
    # <|eot_id|> ends every turn; a base pretrained on documents ends them with <|end_of_text|>.
    stop_tokens = (EOT, END_OF_TEXT)
    pad_token = END_OF_TEXT
    channels = (ASSISTANT_CHANNEL,)
    chat_template = CHAT_TEMPLATE

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        parts = [BEGIN]
        for m in messages:
            parts.append(f"{HEADER}{system_or_role(m)}{END_HEADER}\n\n{neutralise(m['content']).strip()}{EOT}")
        if add_generation_prompt:
            parts.append(f"{HEADER}assistant{END_HEADER}\n\n")
        return "".join(parts)

    def expected_special_ids(self, messages: Sequence[dict]) -> int:
        return 1 + SPECIALS_PER_TURN * len(messages)

    def assistant_spans(self, tokenizer, ids: Sequence[int]) -> list[tuple[str, int, int]]:
        """`<|start_header_id|>role<|end_header_id|>` opens a turn; the token(s) holding the blank line after
        it end the header; the body runs to the next `<|eot_id|>` (inclusive: the model must learn to
        stop). An unterminated turn runs to the end."""
        header, end_header, eot = tokenizer.convert_tokens_to_ids([HEADER, END_HEADER, EOT])
        spans, i, n = [], 0, len(ids)
        while i < n:
            if ids[i] != header:
                i += 1
                continue
            role_end = i + 1
            while role_end < n and ids[role_end] not in (end_header, header, eot):
                role_end += 1
            if role_end >= n or ids[role_end] != end_header:
                i = role_end
                continue
            role = tokenizer.decode(ids[i + 1 : role_end]).strip()
            body = role_end + 1  # "\n\n" is one token in Llama-3's tokenizer, two in a GPT-2-style one
            while body < n and ids[body] not in (header, eot) and "\n\n" not in tokenizer.decode(
                    ids[role_end + 1 : body]):
                body += 1
            stop = body
            while stop < n and ids[stop] not in (eot, header):
                stop += 1
            closed = stop < n and ids[stop] == eot
            if role == "assistant":
                spans.append((ASSISTANT_CHANNEL, body, stop + 1 if closed else stop))
            i = stop + 1 if closed else stop
        return spans

    def row_regex(self) -> str:
        """`<|begin_of_text|>`, an optional system turn, user/assistant exchanges, ending in the supervised
        final answer and its `<|eot_id|>`. Content holds no `<|` or `|>` (render neutralises them).
        Negated classes span newlines, so no DOTALL flag is needed; \\Z forbids trailing text."""
        b, h, eh, eot = (re.escape(t) for t in (BEGIN, HEADER, END_HEADER, EOT))
        content = r"(?:[^<|]|<(?!\|)|\|(?!>))*"
        user = f"{h}user{eh}\\n\\n{content}{eot}"
        answer = f"{h}assistant{eh}\\n\\n{content}{eot}"
        return f"^{b}(?:{h}system{eh}\\n\\n{content}{eot})?(?:{user}{answer})*{user}{answer}\\Z"


FORMAT = Llama3()
