"""A suite's result in words: the failure message, the markdown report, and the check that raises.

    io.write_text(render_report(result, "validate: pairs"), report)
    check(result)  # raises ExpectationsFailed, whose message is failure_message(result)
"""

from webtune.errors import GateFailed
from webtune.expectations import SuiteResult, shorten


def failure_message(result: SuiteResult) -> str:
    """A headline, then one line per failed expectation: what it checks, how badly, which rows."""
    failed = result.failed
    lines = [
        f"{len(failed)} of {len(result.results)} expectations failed "
        f"(suite {result.suite}, {result.rows} rows)"
    ]
    for r in failed:
        line = f"  {r.describe()}: {r.outcome()}"
        if r.sample_ids:
            line += f"; sample {result.id_column}: {', '.join(r.sample_ids)}"
        lines.append(line)
    return "\n".join(lines)


class ExpectationsFailed(GateFailed):
    """A suite failed; the message names every failed expectation with sample row ids."""

    def __init__(self, result: SuiteResult):
        super().__init__(failure_message(result))
        self.result = result


def check(result: SuiteResult) -> None:
    """Raise ExpectationsFailed if any expectation failed."""
    if not result.success:
        raise ExpectationsFailed(result)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_report(result: SuiteResult, title: str) -> str:
    """Markdown: a headline, then a table of every expectation in suite order."""
    n, n_failed = len(result.results), len(result.failed)
    if result.success:
        headline = f"**PASSED**: all {n} expectations met on {result.rows:,} rows (suite `{result.suite}`)."
    else:
        headline = (f"**FAILED**: {n_failed} of {n} expectations failed on {result.rows:,} rows "
                    f"(suite `{result.suite}`).")
    lines = [
        f"# {title}",
        "",
        headline,
        "",
        f"| result | expectation | arguments | outcome | sample {result.id_column} | why |",
        "|---|---|---|---|---|---|",
    ]
    for r in result.results:
        args = ", ".join(f"{k}={shorten(v, 60)}" for k, v in r.kwargs.items())
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    "pass" if r.success else "**FAIL**",
                    f"`{r.type}`",
                    f"`{args}`" if args else "",
                    r.outcome(),
                    ", ".join(r.sample_ids),
                    r.why,
                )
            )
            + " |"
        )
    return "\n".join(lines) + "\n"
