"""webtune.models.inference.ChatModel: assistant-token loss, greedy answers, their stop detection and the
decoding knobs (repetition penalty, no-repeat n-grams).

On the session's toy base, with LoRA adapters made here with peft, shaped like train's (attention
projections + gpt-oss expert weights): a fresh one (B = 0, a no-op) and a perturbed one (random B).
"""

from pathlib import Path

import pytest
import torch

from webtune import formats, quiet
from webtune.formats.harmony import END, ENDOFTEXT, FORMAT, RETURN, START
from webtune.models import load_base
from webtune.models.chat import Answer
from webtune.models.inference import ChatModel, cut_answer

FINAL = ("final",)
QA = [
    ("What does the pass statement do?", "Nothing: it is a placeholder where a statement is required."),
    ("What is a lambda?", "A small anonymous function written as one expression."),
    ("How do I leave a loop early?", "Use break; continue skips to the next iteration instead."),
    ("What does assert check?",
     "That an expression is true; it raises AssertionError when it is not, unless -O."),
]


def messages(question: str, answer: str, system: str = "") -> list[dict]:
    prefix = [{"role": "system", "content": system}] if system else []
    return prefix + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


ROWS = [messages(q, a) for q, a in QA[:3]] + [messages(*QA[3], system="Answer briefly.")]


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"],
    )


def make_adapter(base_dir: Path, out: Path, perturb: bool) -> Path:
    """Save a LoRA adapter (and the base's tokenizer, as train does): fresh (B = 0) or with random B."""
    from peft import get_peft_model

    base = load_base(base_dir)
    with quiet.ignoring(quiet.PEFT_READS_IS_GRADIENT_CHECKPOINTING):
        model = get_peft_model(base.model, lora_config())
    if perturb:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(out)
    base.tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {"fresh": make_adapter(tiny_base, root / "fresh", perturb=False),
            "perturbed": make_adapter(tiny_base, root / "perturbed", perturb=True)}


@pytest.fixture
def chat(tiny_base) -> ChatModel:
    """The base alone (a fresh copy: some tests rig its head)."""
    return ChatModel.load(tiny_base)


def rigged(chat: ChatModel, token_id: int) -> ChatModel:
    """`chat` with an lm_head that always puts token_id on top, whatever the hidden state."""
    config = chat.model.config
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = 100.0
    chat.model.lm_head = head
    return chat


def loss(chat: ChatModel, rows, batch_size: int) -> tuple[float, int]:
    return chat.assistant_loss(rows, batch_size=batch_size, channels=FINAL, turns="all")


# --- assistant-token loss ------------------------------------------------------------------------


def test_loss_is_cross_entropy_on_exactly_the_answer_and_its_return_token(chat):
    tok = chat.tokenizer
    row = ROWS[3]  # system + user + assistant
    ids, _ = formats.template_ids(tok, row)
    prompt = chat.prompt_ids(row)
    assert ids[: len(prompt)] == prompt and ids[-1] == tok.convert_tokens_to_ids(RETURN)

    with torch.no_grad():
        logp = torch.log_softmax(chat.model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    # The answer and <|return|> are ids[len(prompt):]; position t - 1 predicts token t.
    by_hand = [-logp[t - 1, ids[t]].item() for t in range(len(prompt), len(ids))]

    value, n_tokens = loss(chat, [row], batch_size=1)
    assert n_tokens == len(ids) - len(prompt) == len(by_hand)
    assert value == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-5)


def test_loss_is_token_weighted_so_batch_size_does_not_change_it(chat):
    rows = ROWS + [messages("Why?", "Because.")]  # a short row: a mean of batch means would overweight it
    results = [loss(chat, rows, batch_size=b) for b in (1, 2, 5)]
    assert len({n for _, n in results}) == 1
    assert max(v for v, _ in results) - min(v for v, _ in results) < 1e-6

    per_row = [loss(chat, [r], batch_size=1) for r in rows]
    token_weighted = sum(v * n for v, n in per_row) / sum(n for _, n in per_row)
    row_weighted = sum(v for v, _ in per_row) / len(per_row)
    assert results[0][0] == pytest.approx(token_weighted, abs=1e-6)
    assert abs(token_weighted - row_weighted) > 1e-3  # the test data can tell the two apart


def test_rows_with_no_supervised_token_are_an_error_not_a_zero(chat):
    with pytest.raises(ValueError, match="no supervised tokens in the rows: nothing to score"):
        chat.assistant_loss(ROWS, batch_size=2, channels=("analysis",), turns="all")


def test_a_fresh_adapter_gives_exactly_the_base_loss_and_a_changed_one_does_not(tiny_base, adapters, chat):
    base_loss = loss(chat, ROWS, batch_size=2)
    fresh = ChatModel.load(tiny_base, adapters["fresh"])
    assert loss(fresh, ROWS, batch_size=2) == base_loss  # LoRA B = 0 adds exactly nothing

    perturbed = ChatModel.load(tiny_base, adapters["perturbed"])
    adapter_loss = loss(perturbed, ROWS, batch_size=2)
    assert abs(adapter_loss[0] - base_loss[0]) > 1e-3
    with perturbed.base_only():  # how evaluate gets base numbers with one model in memory
        assert loss(perturbed, ROWS, batch_size=2) == base_loss
    assert loss(perturbed, ROWS, batch_size=2) == adapter_loss  # the adapter is back on


# --- greedy answers ------------------------------------------------------------------------------


def test_the_prompt_ends_where_the_answer_starts(chat):
    text = chat.tokenizer.decode(chat.prompt_ids(ROWS[0]))
    assert text == FORMAT.render(ROWS[0][:-1], add_generation_prompt=True)
    assert text.endswith("<|start|>assistant<|channel|>final<|message|>")


def test_stop_ids_are_the_formats_return_end_and_endoftext(chat):
    assert chat.stop_ids() == chat.tokenizer.convert_tokens_to_ids([RETURN, END, ENDOFTEXT])


def test_an_answer_ends_at_the_first_stop_id_whatever_follows(chat):
    tok, stops = chat.tokenizer, chat.stop_ids()
    ret, end, eot, start = tok.convert_tokens_to_ids([RETURN, END, ENDOFTEXT, START])
    words = tok.encode("Use break", add_special_tokens=False)
    n = len(words)
    assert n > 1
    assert cut_answer(tok, [*words, ret, eot, eot], stops) == ("Use break", True, n)  # padded after stopping
    assert cut_answer(tok, [*words, end, *words], stops) == ("Use break", True, n)
    assert cut_answer(tok, [*words, eot, *words], stops) == ("Use break", True, n)
    assert cut_answer(tok, [*words, *words], stops) == ("Use breakUse break", False, 2 * n)
    # <|start|> is no stop: it counts as a generated token, though decoding drops it from the text
    assert cut_answer(tok, [*words, start, *words], stops) == ("Use breakUse break", False, 2 * n + 1)
    assert cut_answer(tok, [ret], stops) == ("", True, 0)


def test_generation_is_deterministic_and_left_padding_does_not_change_answers(tiny_base, adapters):
    chat = ChatModel.load(tiny_base, adapters["perturbed"])
    prompts = [ROWS[1], ROWS[3], ROWS[0]]  # different prompt lengths: the batch is padded
    assert len({len(chat.prompt_ids(p)) for p in prompts}) == 3
    batched = chat.generate(prompts, max_new_tokens=6, batch_size=3)
    assert chat.generate(prompts, max_new_tokens=6, batch_size=3) == batched
    assert chat.generate(prompts, max_new_tokens=6, batch_size=1) == batched
    assert all(isinstance(a.text, str) and isinstance(a.stopped, bool) and 0 < a.tokens <= 6 for a in batched)
    assert len({a.text for a in batched}) > 1  # the answers depend on the prompt


def test_a_model_that_answers_return_at_once_stopped_with_an_empty_answer(chat):
    chat = rigged(chat, chat.tokenizer.convert_tokens_to_ids(RETURN))
    lines = []
    answers = chat.generate(ROWS, max_new_tokens=5, batch_size=3, progress=lines.append)
    assert answers == [Answer("", True, 0)] * len(ROWS)
    assert lines == ["generated 3/4", "generated 4/4"]


@pytest.mark.parametrize("stop", [END, ENDOFTEXT])
def test_every_stop_token_of_the_format_ends_generation(chat, stop):
    chat = rigged(chat, chat.tokenizer.convert_tokens_to_ids(stop))
    assert chat.generate(ROWS[:2], max_new_tokens=5, batch_size=2) == [Answer("", True, 0)] * 2


def test_a_model_that_never_stops_spends_exactly_the_budget(chat):
    letter = chat.tokenizer.convert_tokens_to_ids("a")  # a byte-level BPE alphabet token: decodes to one "a"
    chat = rigged(chat, letter)
    assert chat.generate(ROWS[:2], max_new_tokens=7, batch_size=2) == [Answer("a" * 7, False, 7)] * 2


# --- decoding knobs ------------------------------------------------------------------------------


def generated_ids(chat: ChatModel, rows, **knobs) -> list[list[int]]:
    """The new ids model.generate returned for `rows` (one batch), pads and all."""
    calls = []
    generate = chat.model.generate

    def spy(**kwargs):
        out = generate(**kwargs)
        calls.append(out[:, kwargs["input_ids"].shape[1]:].tolist())
        return out

    chat.model.generate = spy
    chat.generate(rows, max_new_tokens=12, batch_size=len(rows), **knobs)
    del chat.model.generate
    return calls[0]


def test_no_repeat_ngram_size_1_makes_a_greedy_answer_repeat_no_token(chat):
    stops = chat.stop_ids()
    plain = generated_ids(chat, ROWS)
    assert all(len(set(row)) < len(row) for row in plain)  # the toy base repeats itself when left alone
    for row in generated_ids(chat, ROWS, no_repeat_ngram_size=1):
        answer = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
        assert len(answer) > 1 and len(set(answer)) == len(answer), answer


def test_a_repetition_penalty_demotes_a_token_once_it_is_in_the_row(chat):
    tok = chat.tokenizer
    x, z = tok.convert_tokens_to_ids(["x", "z"])
    assert x not in chat.prompt_ids(ROWS[0]) and z not in chat.prompt_ids(ROWS[0])
    config = chat.model.config
    head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[x], head.bias[z] = 100.0, 90.0
    chat.model.lm_head = head
    assert chat.generate(ROWS[:1], max_new_tokens=4, batch_size=1)[0].text == "xxxx"
    # 1.0 is off; at 1.2 a seen x scores 100 / 1.2 = 83.3: z (90) wins once, then z is seen too (75)
    assert chat.generate(ROWS[:1], 4, 1, repetition_penalty=1.0)[0].text == "xxxx"
    assert chat.generate(ROWS[:1], 4, 1, repetition_penalty=1.2)[0].text == "xzxx"
    # greedy stays greedy: the same answer every time
    assert chat.generate(ROWS[:1], 4, 1, repetition_penalty=1.2) == chat.generate(ROWS[:1], 4, 1,
                                                                                   repetition_penalty=1.2)
