"""Standard-library modules as pydoc documents them, rendered as markdown, in an interpreter of their own.

    python -I webtune/sources/pydoc_pages.py json csv    # -> {"json": "# json — ...", ...} on stdout

The pydoc source (pydoc.py) runs this file in a fresh `python -I` rather than rendering in the stage's
process, because a page shows the live reprs of default values: logging's `shutdown(handlerList=[...])`
lists every handler any module imported so far has made, so the same page came out different when the
stage's process had imported an HTTP client. A fresh interpreter imports only the standard library and
the modules asked for, in order, so a page depends on the Python version alone. `-I` keeps this file's
folder (which holds modules named http.py and files.py) and the environment out of sys.path.
Standard library only: nothing of webtune is imported here.
"""

import importlib
import inspect
import json
import pydoc
import re
import sys
import textwrap
from collections.abc import Iterator

# Reprs of default values such as `<built-in method match of re.Pattern object at 0x7f...>` change with
# every run; without the address the page (and its content_sha256) is the same each time.
MEMORY_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


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


def main(names: list[str]) -> dict[str, dict]:
    """{name: {"page": markdown}} per module, or {name: {"error": why}} for one that cannot be imported."""
    pages = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            pages[name] = {"error": str(e)}
            break  # the source stops at the first module it cannot import
        pages[name] = {"page": MEMORY_ADDRESS.sub("", module_markdown(module))}
    return pages


if __name__ == "__main__":
    json.dump(main(sys.argv[1:]), sys.stdout)
