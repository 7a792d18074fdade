"""Markdown pieces for docs/results.md (bench/report.py): a section per bench, tables, numbers, provenance.

A Section says what its bench measures and how to run it, and turns the bench's records into a table
and into verdicts on its goals (bench/goals.py). Nothing here reads a file: report.py hands the records
in, so a section is a pure function of them.
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import goals


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One goal's outcome: the measured value as text, and met (None: cannot tell from what was measured)."""
    goal: str
    measured: str
    met: bool | None


@dataclasses.dataclass(frozen=True)
class Section:
    bench: str  # the results file's name: bench/results/<bench>.json
    title: str
    what: str  # what it measures and how, for a user: a short paragraph
    run: str  # markdown: the command(s) or make target that write the results file
    table: Callable[[list[dict]], list[str]]  # records -> markdown lines (tables, short sentences)
    verdicts: Callable[[list[dict]], list[Verdict]] = lambda records: []
    goals: tuple[str, ...] = ()
    label: Callable[[dict], str] | None = None  # a record's name beside its notes (None: one run, no name)

    @property
    def anchor(self) -> str:
        return self.bench.replace("_", "-")


def num(x, digits: int = 0, unit: str = "") -> str:
    """1234.5 -> '1,234' (digits 0), None -> '–' (not measured)."""
    if x is None:
        return "–"
    text = f"{x:,.{digits}f}" if isinstance(x, int | float) else str(x)
    return text + unit


def pct(x, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def signed_pct(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x * 100:+.{digits}f}%"


def table(head: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> list[str]:
    """A markdown table; `align` is one letter per column (l or r), numbers right-aligned by default."""
    align = align or "l" + "r" * (len(head) - 1)
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def window_cell(results: dict) -> str:
    """The timed window's check (bench/record.py window): stable, drifting (both thirds' means), or not
    recorded (results from before per-step times were kept)."""
    stable = results.get("window_stable", "absent")
    if stable == "absent":
        return "not recorded"
    if stable is None:
        return "too short to tell"
    if stable:
        return "stable"
    return (f"**unstable**: first third {results['first_third_mean_s']:.3g} s/step, "
            f"last {results['last_third_mean_s']:.3g}")


def goal_verdict(name: str, measured: str, met: bool | None) -> Verdict:
    return Verdict(name, measured, met)


def met_text(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "cannot tell"}[met]


def provenance(records: list[dict]) -> list[str]:
    """One bullet per distinct (commit, dirty, machine, date), with the commands that ran there."""
    groups: dict[tuple, list[str]] = {}
    for r in records:
        m = r.get("machine") or {}
        key = (r.get("commit"), r.get("dirty"), m.get("cpu"), m.get("cores"), m.get("gpu"), r.get("date"))
        command = f"`{r['command']}`" if r.get("command") else "command not recorded"
        if command not in groups.setdefault(key, []):
            groups[key].append(command)
    lines = []
    for (commit, dirty, cpu, cores, gpu, date), commands in groups.items():
        if commit is None:
            code = "commit not recorded"
        else:
            code = f"commit `{commit[:10]}`" + {True: " with uncommitted changes", False: " (clean tree)",
                                                 None: ""}[dirty]
        machine = ", ".join([cpu or "CPU not recorded", f"{cores} cores" if cores else "cores not recorded",
                             *([gpu] if gpu else [])])
        when = date.replace("T", " ").replace("Z", " UTC") if date else "date not recorded"
        lines.append(f"- {code}; {machine}; {when}: {'; '.join(commands)}")
    return lines


def notes(records: list[dict], label: Callable[[dict], str] | None) -> list[str]:
    """The records' notes (what a run showed that its numbers alone do not say), one bullet each."""
    return [f"- *{label(r['results'])}*: {r['notes']}" if label else f"- {r['notes']}"
            for r in records if r.get("notes")]


def goal_lines(section: Section, records: list[dict]) -> list[str]:
    found = {v.goal: v for v in section.verdicts(records)} if records else {}
    lines = []
    for name in section.goals:
        v = found.get(name)
        outcome = f"{v.measured}: {met_text(v.met)}" if v else "not measured yet"
        lines.append(f"- Goal: {goals.text(name)}. Measured: {outcome}.")
    return lines
