"""The hosted chat model against the OpenAI emulator over real HTTP: the same calls evaluate makes on a
local ChatModel (generate, base_only), a loss it declares it cannot score, and the adapter folder that
opens it (hosted.json)."""

import json

import pytest

from tests.emulators.openai import OpenAIEmulator
from webtune.models import OPENAI_URL, ModelError
from webtune.models.hosted import HostedChat, HostedError, load_chat
from webtune.models.inference import ChatModel

KEY = "sk-test-hosted-chat-7a1"
BASE, TUNED = "gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18:emulated:webtune:abc123"
ROWS = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}"},
         {"role": "assistant", "content": f"reference {i}"}] for i in range(3)]


@pytest.fixture
def api():
    with OpenAIEmulator(key=KEY) as emulator:
        emulator.answers |= {BASE: "the base says this", TUNED: "tuned"}
        yield emulator


def hosted_folder(tmp_path, base_url: str):
    (tmp_path / "hosted.json").write_text(json.dumps({
        "backend": "openai", "fine_tuned_model": TUNED, "job_id": "ftjob-1", "base_model": BASE,
        "trained_tokens": 1, "base_url": base_url}))
    return tmp_path


def test_generate_asks_greedily_for_each_prompt_and_base_only_asks_the_base_model(api, tmp_path):
    asked_for = []
    chat = load_chat(tmp_path / "no-base", hosted_folder(tmp_path, f"{api.url}/v1"), api_key=lambda model: (
        asked_for.append(model) or KEY))
    assert isinstance(chat, HostedChat) and asked_for == [TUNED]
    lines = []
    tuned = chat.generate(ROWS, max_new_tokens=7, batch_size=2, progress=lines.append,
                          repetition_penalty=1.3, no_repeat_ngram_size=2)
    with chat.base_only():
        base = chat.generate(ROWS[:1], max_new_tokens=7, batch_size=2)
    assert [tuple(a) for a in tuned] == [("tuned", True, 1)] * 3
    assert [tuple(a) for a in base] == [("the base says this", True, 4)]
    assert lines == ["generated 2/3", "generated 3/3"]
    requests = [c.body for c in api.calls("POST", "/v1/chat/completions")]
    assert [r["model"] for r in requests] == [TUNED] * 3 + [BASE]
    # the row less its answer, greedy, the budget as max_tokens; the local-only knobs are not sent
    assert requests[0] == {"model": TUNED, "messages": ROWS[0][:2], "max_tokens": 7, "temperature": 0}
    assert chat.model == TUNED and chat.hosted_models == {"base": BASE, "adapter": TUNED}


def test_a_hosted_model_declares_it_has_no_loss_and_refuses_to_score_one(api):
    chat = HostedChat.connect(TUNED, api_key=KEY, base_url=f"{api.url}/v1", base_model=BASE)
    assert (chat.can_score_loss, ChatModel.can_score_loss) == (False, True)
    with pytest.raises(HostedError, match=r"^ft:\S+: no loss: a hosted model returns text"):
        chat.assistant_loss(ROWS, 2, ("final",), "all")


def test_base_only_without_a_base_model_is_one_line(api):
    chat = HostedChat.connect(TUNED, api_key=KEY, base_url=f"{api.url}/v1")
    with pytest.raises(HostedError, match=r"^ft:\S+: no base model to compare with"), chat.base_only():
        pass


def test_a_folder_without_hosted_json_is_a_local_adapter_and_asks_for_no_key(tmp_path):
    def no_key(model):
        raise AssertionError("a local adapter needs no key")

    with pytest.raises(ModelError, match="has no adapter_config.json"):  # ChatModel.load's own check
        load_chat(tmp_path / "no-base", tmp_path, api_key=no_key)


def test_a_model_trained_on_openai_itself_is_reached_at_the_clients_default(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    chat = load_chat(tmp_path / "no-base", hosted_folder(tmp_path, OPENAI_URL), api_key=lambda model: KEY)
    assert str(chat.client.base_url) == OPENAI_URL + "/"
