"""Pull the runnable examples out of the project's Markdown, so tests can run them as written.

Conventions the docs follow (README.md and docs/*.md):
- a fenced block tagged `sh` is a shell script a reader pastes whole: it must exit 0;
- a fenced block tagged `console` is a transcript: each `$ ` line is a command, the lines up to the
  next `$ ` are what it printed; a command whose printed lines contain `error:` must fail, every other
  one must succeed;
- a fenced block tagged with a language and a file name (```` ```csv devices.csv ````) is a file the
  reader saves under that name before running what follows;
- `text` blocks (sample output) and the rest are not run.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    lang: str
    filename: str | None
    body: str

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"


@dataclass(frozen=True)
class Step:
    """One console command and whether the transcript shows it failing."""

    block: Block
    command: str
    expect_failure: bool
    shown: str


def blocks(doc: Path) -> list[Block]:
    text = doc.read_text()
    out = []
    for m in FENCE.finditer(text):
        words = m["info"].split()
        lang = words[0] if words else ""
        filename = words[1] if len(words) > 1 else None
        out.append(Block(doc, text.count("\n", 0, m.start()) + 1, lang, filename, m["body"]))
    return out


def console_steps(block: Block) -> list[Step]:
    steps: list[Step] = []
    command: str | None = None
    shown: list[str] = []

    def flush() -> None:
        if command is not None:
            output = "\n".join(shown)
            steps.append(Step(block, command, "error:" in output, output))

    for line in block.body.splitlines():
        if line.startswith("$ "):
            flush()
            command, shown = line[2:], []
        elif command is not None:
            shown.append(line)
    flush()
    return steps


def sh_steps(block: Block) -> list[Step]:
    """A `sh` block's commands (a trailing backslash joins lines; comment-only lines are dropped)."""
    steps, pending = [], ""
    for line in block.body.splitlines():
        if pending:
            line = pending + "\n" + line
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line
            continue
        if line.strip() and not line.lstrip().startswith("#"):
            steps.append(Step(block, line, False, ""))
    return steps


def document_script(doc: Path, skip: dict[str, str]) -> tuple[str, list[Step], list[tuple[Step, str]]]:
    """One bash script that runs a document's examples in order in one shell (so `export`, `.` and
    files carry over, as in a reader's terminal). After each command its exit code is printed behind a
    marker. Returns (script, steps run, steps skipped with the reason): a command starting with a key
    of `skip` is not run (the caller says why, e.g. `make test` is the suite itself)."""
    lines = ["set +e", "exec 2>&1"]  # one stream, in order, for the per-step output
    run: list[Step] = []
    skipped: list[tuple[Step, str]] = []
    for block in blocks(doc):
        if block.filename is not None and block.lang not in ("sh", "console", "text"):
            lines.append(f"cat > {shlex.quote(block.filename)} <<'DOC_FILE_EOF'\n{block.body}DOC_FILE_EOF")
            continue
        steps = (
            sh_steps(block) if block.lang == "sh" else console_steps(block) if block.lang == "console" else []
        )
        for step in steps:
            reason = next((why for prefix, why in skip.items() if step.command.startswith(prefix)), None)
            if reason is not None:
                skipped.append((step, reason))
                continue
            i = len(run)
            run.append(step)
            lines.append(f"echo {shlex.quote(f'@@step {i}')}")
            lines.append(step.command)
            # The newline first: a command's output need not end with one (curl's JSON does not).
            lines.append(f"printf '\\n@@rc {i} %s\\n' \"$?\"")
    return "\n".join(lines) + "\n", run, skipped


def step_results(output: str) -> dict[int, tuple[int, str]]:
    """Exit code and output of each step, from the script's combined output."""
    results: dict[int, tuple[int, str]] = {}
    current: int | None = None
    buf: list[str] = []
    for line in output.splitlines():
        if line.startswith("@@step "):
            current, buf = int(line.split()[1]), []
        elif line.startswith("@@rc ") and current is not None:
            _, idx, rc = line.split()
            results[int(idx)] = (int(rc), "\n".join(buf))
            current = None
        elif current is not None:
            buf.append(line)
    return results
