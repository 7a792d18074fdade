"""chat: talk to the fine-tuned model in a terminal, tokens streaming as they are generated.

    python -m webtune.cli.chat                                   # models/base + models/adapter
    python -m webtune.cli.chat --no-adapter                      # the base alone, to compare
    python -m webtune.cli.chat --reasoning high                  # gpt-oss bases: reasoning effort
    python -m webtune.cli.chat --hosted ft:gpt-4o-mini-2024-07-18:org:webtune:abc123   # train.backend openai
    python -m webtune.cli.chat --once "What does json.dumps do?" # one answer, then exit (scripts)

`--once` prints the answer alone on stdout; read by a script (stderr not a terminal) it prints nothing else:
no weight-loading bars, no library warnings (webtune.quiet). Sampling defaults to temperature 0.7, top_p 0.9
(the original recipe's test settings; --temperature 0 is greedy).
In a session `/reset` forgets the conversation and `/exit` (or Ctrl-D) leaves. A hosted model needs
OPENAI_API_KEY (environment or .env); `--base-url` reaches any endpoint speaking the same API.
Local and hosted models are the same two calls (webtune.models.inference.ChatModel, .hosted.HostedChat),
which `serve` and evaluate use too.
"""

import argparse
import sys
from pathlib import Path

from webtune import errors, secrets
from webtune.models.chat import REASONING_EFFORTS, Sampling
from webtune.models.inference import ChatModel


def load_chat(args):
    if args.hosted:
        from webtune.models.hosted import HostedChat

        key = secrets.require("OPENAI_API_KEY", needed_by=f"chat --hosted {args.hosted}")
        return HostedChat.connect(args.hosted, api_key=key, base_url=args.base_url)
    return ChatModel.load(args.base, None if args.no_adapter else args.adapter)


def say(chat, conversation: list[dict], sampling: Sampling, out) -> str:
    pieces = []
    for piece in chat.stream(conversation, sampling):
        pieces.append(piece)
        out.write(piece)
        out.flush()
    out.write("\n")
    return "".join(pieces)


def session(chat, sampling: Sampling, system: str | None, lines, out) -> None:
    """The conversation loop over `lines` (stdin): each line is the user's turn."""
    start = [{"role": "system", "content": system}] if system else []
    conversation = list(start)
    out.write("webtune chat: /reset forgets the conversation, /exit leaves\n")
    while True:
        out.write("you> ")
        out.flush()
        line = lines.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            return
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            conversation = list(start)
            continue
        if not text.strip():
            continue
        conversation.append({"role": "user", "content": text})
        out.write("model> ")
        conversation.append({"role": "assistant", "content": say(chat, conversation, sampling, out)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--adapter", type=Path, default=Path("models/adapter"))
    parser.add_argument("--no-adapter", action="store_true", help="the base alone")
    parser.add_argument("--hosted", metavar="MODEL", help="a hosted model id (ft:...) instead of a local one")
    parser.add_argument("--base-url", help="the API's base URL for --hosted (default: OpenAI's)")
    parser.add_argument("--system", help="a system message opening the conversation")
    parser.add_argument("--temperature", type=float, default=Sampling.temperature)
    parser.add_argument("--top-p", type=float, default=Sampling.top_p)
    parser.add_argument("--max-new-tokens", type=int, default=Sampling.max_new_tokens)
    parser.add_argument("--seed", type=int, help="the same answer every time")
    parser.add_argument("--reasoning", choices=REASONING_EFFORTS, help="gpt-oss reasoning effort")
    parser.add_argument("--once", metavar="TEXT", help="answer TEXT and exit")
    args = parser.parse_args(argv)
    with errors.reported("chat"):
        sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            top_p=args.top_p, seed=args.seed, reasoning=args.reasoning)
        if problem := sampling.problems():
            raise errors.UserError(problem)
        chat = load_chat(args)
        if args.reasoning and not args.hosted and chat.chat_format.name != "harmony":
            raise errors.UserError(f"--reasoning is a gpt-oss feature; this base's format is "
                                   f"{chat.chat_format.name}")
        if args.once is not None:
            start = [{"role": "system", "content": args.system}] if args.system else []
            say(chat, [*start, {"role": "user", "content": args.once}], sampling, sys.stdout)
            return
        session(chat, sampling, args.system, sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
