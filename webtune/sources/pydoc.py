"""The embedded default source: CPython's own documentation, which ships with every Python.

Two kinds of pages, both real domain documentation and both offline:
- `pydoc_data.topics`: the language-reference topics `help("assert")` shows (plain text whose
  headings are underlined with `***`, `===`, `---`);
- standard-library modules as pydoc documents them, rendered as markdown: one `#` page per module
  (its docstring) with one `##` section per public function, class and method.
The text depends on the Python version (it is whatever this interpreter ships), and the raw
scrape records it, so a re-run downstream never depends on the interpreter again. `fetched_at` is the
interpreter's build time (when these pages were made), not the wall clock: on the same Python a fresh
clone's scrape is byte-identical to the committed one, so every later stage's output hash repeats too.
"""

import dataclasses
import datetime as dt
import importlib
import inspect
import platform
import pydoc
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

from webtune.params import knob
from webtune.sources import MARKDOWN, TEXT, EmptySourceError, ScrapeParams, raw_row


@dataclasses.dataclass(frozen=True)
class PydocParams:
    topics: bool = knob()
    modules: tuple[str, ...] = knob()


PARAMS = PydocParams  # this variant's section (webtune.registry; webtune.params builds it)

SOURCE = "pydoc"
# Reprs of default values such as `<built-in method match of re.Pattern object at 0x7f...>` change with
# every run; without the address the page (and its content_sha256) is the same each time.
_MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def build_time() -> str:
    """This interpreter's build time as ISO-8601 (`platform.python_build()` says 'May  9 2026 07:35:25')."""
    stamp = " ".join(platform.python_build()[1].split())
    try:
        return dt.datetime.strptime(stamp, "%b %d %Y %H:%M:%S").strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:  # an unusual build string: the version still pins the content
        return f"python-{platform.python_version()}"


def fetch(params: ScrapeParams, *, sources_dir: Path, now: Callable[[], str]) -> Iterator[dict]:
    del sources_dir, now  # pages ship with the interpreter; their time is its build time
    built = build_time()
    if params.pydoc.topics:
        from pydoc_data.topics import topics

        for name in sorted(topics):
            text = topics[name]
            title = text.strip().splitlines()[0].strip() if text.strip() else name
            yield raw_row(
                source=SOURCE,
                url=f"pydoc://topics/{name}",
                raw=text.encode(),
                content_type=TEXT,
                title=title,
                fetched_at=built,
            )
    for module_name in params.pydoc.modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise EmptySourceError(f"pydoc source: module {module_name!r} cannot be imported: {e}") from e
        yield raw_row(
            source=SOURCE,
            url=f"pydoc://module/{module_name}",
            raw=_MEMORY_ADDRESS.sub("", module_markdown(module)).encode(),
            content_type=MARKDOWN,
            title=module_name,
            fetched_at=built,
        )


def module_markdown(module) -> str:
    """A module's pydoc documentation as markdown: `# name — synopsis`, docstring, `##` per member."""
    name = module.__name__
    doc = inspect.getdoc(module) or ""
    synopsis = doc.splitlines()[0] if doc else ""
    parts = [f"# {name} — {synopsis}" if synopsis else f"# {name}", doc]
    for qualname, obj in _public_members(module):
        body = _member_doc(obj, qualname.rsplit(".", 1)[-1])
        if body:
            parts.append(f"## {name}.{qualname}\n\n{body}")
    return "\n\n".join(p for p in parts if p) + "\n"


def _member_doc(obj, short_name: str) -> str:
    """pydoc's plain-text entry for one function/method: signature line, then its docstring."""
    if inspect.isclass(obj):
        doc = inspect.getdoc(obj)
        if not doc:
            return ""
        try:
            signature = f"{short_name}{inspect.signature(obj)}"
        except (TypeError, ValueError):
            signature = short_name
        return f"    class {signature}\n\n{doc}"
    rendered = pydoc.plain(pydoc.plaintext.document(obj, short_name))
    lines = rendered.splitlines()
    if len(lines) < 2:  # a signature with no docstring teaches nothing
        return ""
    # pydoc indents the docstring under the signature; keep the signature as a code line.
    return f"    {lines[0]}\n\n{textwrap.dedent(chr(10).join(lines[1:])).strip()}"


def _public_members(module) -> Iterator[tuple[str, object]]:
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.isclass(obj)):
            continue
        if not (getattr(obj, "__module__", None) or "").startswith(module.__name__.split(".")[0]):
            continue  # re-exported from elsewhere
        yield name, obj
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if attr.startswith("_") or not (inspect.isfunction(member)
                                                or inspect.ismethoddescriptor(member)):
                    continue
                yield f"{name}.{attr}", member
