"""chat: one answer (--once; read by a script it prints the answer alone), a session with history and /reset,
gpt-oss reasoning effort, and a hosted model reached over real HTTP (the toy `serve`, which speaks the same
API as OpenAI)."""

import io
import os
import subprocess
import sys

import pytest

from webtune.cli import chat as C
from webtune.models.chat import Sampling
from webtune.models.hosted import HostedChat, HostedError

GREEDY = Sampling(max_new_tokens=10, temperature=0)


def user(text):
    return {"role": "user", "content": text}


def test_once_prints_the_streamed_greedy_answer(tiny_base, toy_adapter, chat, capsys):
    C.main(["--base", str(tiny_base), "--adapter", str(toy_adapter), "--once", "What is csv?",
            "--temperature", "0", "--max-new-tokens", "10"])
    assert capsys.readouterr().out == chat.reply([[user("What is csv?")]], GREEDY)[0].text + "\n"


def test_once_read_by_a_script_prints_the_answer_alone_and_nothing_on_stderr(tiny_base, toy_adapter, chat,
                                                                             repo):
    """stdout and stderr are pipes, as in `answer=$(python -m webtune.cli.chat --once ...)`: no weight-loading
    bar (bars draw on a terminal only) and no library warning (webtune.quiet)."""
    proc = subprocess.run(
        [sys.executable, "-m", "webtune.cli.chat", "--base", str(tiny_base), "--adapter", str(toy_adapter),
         "--once", "What is csv?", "--temperature", "0", "--max-new-tokens", "10"],
        cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == chat.reply([[user("What is csv?")]], GREEDY)[0].text + "\n"
    assert proc.stderr == ""


def test_a_session_keeps_the_history_and_reset_forgets_it(chat):
    out = io.StringIO()
    C.session(chat, GREEDY, None, io.StringIO("first question\nsecond one\n/reset\nsecond one\n/exit\n"), out)
    first = chat.reply([[user("first question")]], GREEDY)[0].text
    with_history = [user("first question"), {"role": "assistant", "content": first}, user("second one")]
    second = chat.reply([with_history], GREEDY)[0].text
    fresh = chat.reply([[user("second one")]], GREEDY)[0].text
    turns = out.getvalue().split("you> ")
    answers = [line.removeprefix("model> ") for line in turns if line.startswith("model> ")]
    assert answers == [f"{first}\n", f"{second}\n", f"{fresh}\n"]


def test_reasoning_effort_goes_into_the_gpt_oss_system_turn(chat):
    text = chat.tokenizer.decode(chat.conversation_ids([user("hi")], reasoning="high"))
    assert text.startswith("<|start|>system<|message|>Reasoning: high<|end|>")
    briefed = [{"role": "system", "content": "Be brief."}, user("hi")]
    text = chat.tokenizer.decode(chat.conversation_ids(briefed, reasoning="low"))
    assert text.startswith("<|start|>system<|message|>Reasoning: low\n\nBe brief.<|end|>")


def test_a_hosted_model_answers_through_the_same_calls(server, chat):
    hosted = HostedChat.connect("toy", api_key="unused", base_url=f"{server}/v1")
    conversation = [user("What does pathlib do?")]
    expected = chat.reply([conversation], GREEDY)[0].text
    assert hosted.reply([conversation], GREEDY)[0].text == expected
    assert "".join(hosted.stream(conversation, GREEDY)) == expected
    with pytest.raises(HostedError, match=r"^gpt-x: HTTP 404: the model 'gpt-x' does not exist"):
        HostedChat.connect("gpt-x", api_key="unused", base_url=f"{server}/v1").reply([conversation], GREEDY)


def test_a_hosted_chat_without_a_key_fails_in_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        C.main(["--hosted", "ft:gpt-4o-mini-2024-07-18:org:x:1", "--once", "hi"])
    assert e.value.code == 1
    assert capsys.readouterr().err.startswith("chat: chat --hosted ft:gpt-4o-mini-2024-07-18:org:x:1 needs "
                                              "OPENAI_API_KEY")
