"""The embedded default source: CPython's own documentation, which ships with every Python.

Two kinds of pages, both real domain documentation and both offline:
- `pydoc_data.topics`: the language-reference topics `help("assert")` shows (plain text whose
  headings are underlined with `***`, `===`, `---`);
- standard-library modules as pydoc documents them, rendered as markdown: one `#` page per module
  (its docstring) with one `##` section per public function, class and method, each rendered in a fresh
  interpreter (pydoc_pages.py), so a page never shows what else the stage's process imported.
The text depends on the Python version (it is whatever this interpreter ships), and the raw
scrape records it, so a re-run downstream never depends on the interpreter again. `fetched_at` is the
interpreter's build time (when these pages were made), not the wall clock: on the same Python a fresh
clone's scrape is byte-identical to the committed one, so every later stage's output hash repeats too.
"""

import dataclasses
import datetime as dt
import json
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from webtune.params import knob
from webtune.sources import MARKDOWN, TEXT, EmptySourceError, ScrapeParams, raw_row


@dataclasses.dataclass(frozen=True)
class PydocParams:
    topics: bool = knob()
    modules: tuple[str, ...] = knob()


PARAMS = PydocParams  # this variant's section (webtune.registry; webtune.params builds it)

SOURCE = "pydoc"


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
    for module_name, page in module_pages(params.pydoc.modules).items():
        if "error" in page:
            raise EmptySourceError(f"pydoc source: module {module_name!r} cannot be imported: "
                                   f"{page['error']}")
        yield raw_row(
            source=SOURCE,
            url=f"pydoc://module/{module_name}",
            raw=page["page"].encode(),
            content_type=MARKDOWN,
            title=module_name,
            fetched_at=built,
        )


def module_pages(names: Sequence[str]) -> dict[str, dict]:
    """Each module's page, rendered in a fresh interpreter (pydoc_pages.py says why)."""
    if not names:
        return {}
    script = Path(__file__).with_name("pydoc_pages.py")
    done = subprocess.run([sys.executable, "-I", str(script), *names], capture_output=True, text=True)
    if done.returncode != 0:
        raise EmptySourceError(f"pydoc source: rendering {', '.join(names)} failed: "
                               f"{(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(done.stdout)
