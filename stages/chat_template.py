"""The one place structured messages become text and tokens (gpt-oss "harmony" format).

    <|start|>system<|message|>S<|end|><|start|>user<|message|>Q<|end|><|start|>assistant<|channel|>final<|message|>A<|return|>

format, train and evaluate all go through this module. Scraped text is data: before rendering, any
`<|` / `|>` in message content is neutralised (`<¦` / `¦>`), so content can never spell a control
token, and the tokenizer's special ids appear only where the structure puts them.

The Jinja template below is what tokenizers carry (`tokenizer.chat_template`); `render` is the same
thing in Python for the data stages (no tokenizer needed, and fast). A test asserts they agree.
`{% generation %}` wraps the assistant answer *and* its `<|return|>`: those are exactly the
supervised tokens, so the model learns to stop.
"""

from collections.abc import Sequence

START, END, MESSAGE, CHANNEL, RETURN, ENDOFTEXT = (
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|return|>",
    "<|endoftext|>",
)
SPECIAL_TOKENS = (ENDOFTEXT, START, END, MESSAGE, CHANNEL, RETURN)
ROLES = ("system", "developer", "user", "assistant")
ASSISTANT_CHANNEL = "final"

# Replacements for the two halves of a control-tag delimiter; "¦" (broken bar) is no tokenizer's special.
NEUTRAL_OPEN, NEUTRAL_CLOSE = "<\u00a6", "\u00a6>"

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = message['content'] | replace('<|', '<\u00a6') | replace('|>', '\u00a6>') -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|start|>assistant<|channel|>final<|message|>"
    "{%- generation -%}{{ content }}{{ '<|return|>' if loop.last else '<|end|>' }}{%- endgeneration -%}"
    "{%- else -%}"
    "<|start|>{{ message['role'] }}<|message|>{{ content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant<|channel|>final<|message|>{%- endif -%}"
)

# Every special id a rendered turn contains: user/system = start, message, end;
# assistant = start, channel, message, return (or end when it is not the last turn).
SPECIALS_PER_TURN = {"system": 3, "developer": 3, "user": 3, "assistant": 4}


def neutralise(text: str) -> str:
    """Make chat-template control sequences inert: `<|start|>` -> `<¦start¦>`."""
    return text.replace("<|", NEUTRAL_OPEN).replace("|>", NEUTRAL_CLOSE)


def count_control_tags(text: str) -> int:
    """Number of `<|`...`|>` delimiters (either half) in text, i.e. what neutralise would change."""
    return text.count("<|") + text.count("|>")


def validate_messages(messages: Sequence[dict]) -> None:
    """Raise ValueError naming the index of the first structural problem."""
    if not messages:
        raise ValueError("no messages")
    for i, m in enumerate(messages):
        if set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message at index {i} must have exactly role and content, got {sorted(m)}")
        if m["role"] not in ROLES:
            raise ValueError(f"unknown role {m['role']!r} at index {i}")
        if not isinstance(m["content"], str):
            raise ValueError(f"content at index {i} is not a string")
        if m["role"] in ("system", "developer") and i != 0:
            raise ValueError(f"{m['role']} message at index {i}: only the first message may be one")
        if i > 0 and m["role"] == messages[i - 1]["role"]:
            raise ValueError(f"two consecutive {m['role']} messages at index {i}")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"last message (index {len(messages) - 1}) must be the assistant's answer")


def render(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Messages -> harmony text, identical to the Jinja template (deterministic: no dates)."""
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


def expected_special_ids(messages: Sequence[dict]) -> int:
    """How many special-token ids a correct tokenization of render(messages) contains."""
    return sum(SPECIALS_PER_TURN[m["role"]] for m in messages)


def prompt_messages(messages: Sequence[dict]) -> list[dict]:
    """Everything before the final assistant answer (what a model is prompted with)."""
    assert messages[-1]["role"] == "assistant", "the last message must be the answer"
    return list(messages[:-1])


def encode(tokenizer, messages: Sequence[dict]) -> tuple[list[int], list[int]]:
    """Tokenize through the tokenizer's chat template; return (ids, mask) with mask 1 on supervised tokens.

    The mask comes from the template's {% generation %} block: the assistant answer and its stop token.
    """
    out = tokenizer.apply_chat_template(
        list(messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


def count_special_ids(tokenizer, ids: Sequence[int]) -> int:
    special = set(tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    return sum(1 for i in ids if i in special)


# ---------------------------------------------------------------------------------------------
# Supervision: which tokens a model is trained on, read from the token ids themselves.

TURNS = ("all", "last")


def assistant_spans(tokenizer, ids: Sequence[int]) -> list[tuple[str, int, int]]:
    """(channel, start, stop) for each assistant turn in `ids`: ids[start:stop] is its content + stop token.

    Parsed from the structural special ids, not from the template's {% generation %} markers, so it is
    an independent check on them: `<|start|>assistant<|channel|>C<|message|>` opens a turn and the next
    `<|return|>` or `<|end|>` closes it (inclusive: the model must learn to stop). An unterminated turn
    (cut by truncation) runs to the end of `ids`.
    """
    start, channel, message, end, ret = tokenizer.convert_tokens_to_ids([START, CHANNEL, MESSAGE, END, RETURN])
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


def supervised_mask(
    tokenizer, ids: Sequence[int], channels: Sequence[str] = (ASSISTANT_CHANNEL,), turns: str = "all"
) -> list[int]:
    """1 on the tokens to train on: assistant content (+ its stop token) in `channels`; `turns` all | last."""
    if turns not in TURNS:
        raise ValueError(f"turns must be one of {TURNS}, got {turns!r}")
    spans = [s for s in assistant_spans(tokenizer, ids) if s[0] in channels]
    if turns == "last":
        spans = spans[-1:]
    mask = [0] * len(ids)
    for _, lo, hi in spans:
        mask[lo:hi] = [1] * (hi - lo)
    return mask
