"""Every shell command in the README and the docs is checked, so that the docs cannot rot.

Commands come from fenced ``sh``/``bash``/``shell``/``console`` blocks (``console``: only the
``$ `` lines) of README.md, docs/*.md, compose/README.md and ops/*.md. Each one is checked by
what it runs:

- ``peering ...`` (also ``.venv/bin/peering``): parsed by the real Typer app with click's
  ``make_context``, down to the verb, without running it;
- ``make TARGET``: the target exists in the Makefile;
- ``ops/...``, ``bench/...`` scripts (also ``python``/``bash`` + script): the file exists and
  is executable, or is a ``.py`` file run with Python;
- anything else: a known outside tool (docker, curl, systemctl, ...) or a program on PATH;
  repository paths among its arguments (``ops/...``, ``compose/...``) must exist.

A block preceded by ``<!-- docs-test: run -->`` is also run for real (keep those cheap:
``peering --help``). ``$(...)`` substitutions are checked as commands of their own; env-var
prefixes (``PEERING_HTTP_ADDR=... peering list``), comments, trailing ``&`` and line
continuations are handled.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.exceptions import Exit, TyperException

from agent.cli import app
from tests.agent_fixtures import REPO, cli_env

DOC_FILES = sorted(
    {
        REPO / "README.md",
        *(REPO / "docs").glob("*.md"),
        REPO / "compose" / "README.md",
        *(REPO / "ops").glob("*.md"),
    }
)
SHELL_LANGS = {"sh", "bash", "shell", "console"}
RUN_MARKER = "<!-- docs-test: run -->"
RUN_TIMEOUT = 60
# Programs that docs may name without this machine having them (deployment hosts, Docker).
EXTERNAL_TOOLS = {
    "cat", "cd", "chmod", "chown", "cp", "curl", "date", "docker", "docker-compose", "echo",
    "export", "grep", "head", "install", "jq", "journalctl", "kcat", "kill", "ls", "mkdir",
    "mv", "openssl", "pip", "pkill", "prometheus", "promtool", "rm", "sed", "sleep", "sort",
    "sqlite3", "sudo", "systemctl", "tail", "tar", "tee", "unset", "useradd", "wait", "watch",
    "wc", "xargs",
}  # fmt: skip
PYTHONS = {"python", "python3", ".venv/bin/python", "$(BIN)/python"}
SHELLS = {"bash", "sh"}
PEERING = {"peering", ".venv/bin/peering"}
REPO_DIRS = ("ops/", "bench/", "compose/", "schemas/", "agent/", "tests/", "docs/")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_HEREDOC = re.compile(r"<<-?\s*['\"]?([A-Za-z_]+)['\"]?")


@dataclass(frozen=True)
class DocCommand:
    """One command line of a doc, where it is, and whether the doc asks for it to be run."""

    path: Path
    line: int
    text: str
    run: bool = False

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


@dataclass
class _Block:
    lang: str
    start: int
    run: bool
    lines: list[tuple[int, str]] = field(default_factory=list)


# --- extraction -----------------------------------------------------------------------------


def _blocks(text: str) -> list[_Block]:
    """Fenced blocks with their language, first line number and the run marker."""
    blocks: list[_Block] = []
    current: _Block | None = None
    marked = False
    fence = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if current is None:
            match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if match:
                fence = match.group(1)
                current = _Block(match.group(2).lower(), number, marked)
                marked = False
            elif stripped == RUN_MARKER:
                marked = True
            elif stripped:
                marked = False
            continue
        if stripped.startswith(fence) and stripped.strip("`~") == "":
            blocks.append(current)
            current = None
            continue
        current.lines.append((number, raw))
    return blocks


def _commands_of(block: _Block, path: Path) -> list[DocCommand]:
    """Join continuations, keep ``$ `` lines of console blocks, skip comments and heredocs."""
    out: list[DocCommand] = []
    pending = ""
    pending_line = 0
    heredoc_end: str | None = None
    for number, raw in block.lines:
        line = raw.rstrip()
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if not pending:
            if block.lang == "console":
                if not line.lstrip().startswith("$ "):
                    continue
                line = line.lstrip()[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            pending_line = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        heredoc = _HEREDOC.search(command)
        if heredoc:
            heredoc_end = heredoc.group(1)
        out.append(DocCommand(path, pending_line, command, block.run))
    if pending:
        out.append(DocCommand(path, pending_line, pending.strip(), block.run))
    return out


def extract_commands(path: Path) -> list[DocCommand]:
    commands: list[DocCommand] = []
    for block in _blocks(path.read_text()):
        if block.lang in SHELL_LANGS:
            commands.extend(_commands_of(block, path))
    return commands


def _substitutions(text: str) -> tuple[str, list[str]]:
    """Replace each top-level ``$(...)`` by a placeholder word; return the inner commands."""
    inner: list[str] = []
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$(", i) and not text.startswith("$((", i):
            depth, j = 1, i + 2
            while j < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            if depth:
                raise ValueError(f"unbalanced $( in {text!r}")
            inner.append(text[i + 2 : j - 1])
            out.append("SUBSTITUTED")
            i = j
            continue
        out.append(text[i])
        i += 1
    return "".join(out), inner


_SHELL_KEYWORDS = frozenset({"until", "while", "do", "done", "if", "then", "else", "fi", "!"})


def simple_commands(text: str) -> list[list[str]]:
    """The argv of every simple command in a shell line (pipes, &&, ||, ;, &, $(...))."""
    outer, inner = _substitutions(text)
    lexer = shlex.shlex(outer, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    redirect = False
    for token in lexer:
        if token in {";", "&", "&&", "|", "||", ";;"}:
            commands.append([])
            redirect = False
        elif set(token) <= set("<>&"):
            redirect = True  # the next word is a redirection target, not an argument
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()  # the file descriptor of `2> file`
        elif redirect:
            redirect = False
        elif not commands[-1] and token in _SHELL_KEYWORDS:
            continue  # `until CMD; do CMD; done`: the commands are what matters
        else:
            commands[-1].append(token)
    result = [argv for argv in commands if argv]
    for command in inner:
        result.extend(simple_commands(command))
    return result


def strip_prefixes(argv: list[str]) -> list[str]:
    """Drop ``VAR=value`` prefixes, ``env`` and ``sudo``: what remains is the program."""
    rest = list(argv)
    while rest and (_ASSIGNMENT.match(rest[0]) or rest[0] in {"env", "sudo", "exec"}):
        rest.pop(0)
    return rest


# --- checks ---------------------------------------------------------------------------------


def make_targets() -> set[str]:
    targets: set[str] = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_./$()-][^:=\s]*(?:\s+[^:=\s]+)*)\s*::?(?!=)", line)
        if match and not line.startswith((".", "\t")):
            targets.update(match.group(1).split())
    return targets


def check_peering(args: list[str]) -> None:
    """Parse ``args`` with the real CLI down to the verb, without running anything."""
    # typer ships its own click: its classes and exceptions, not the ``click`` package's.
    command: Any = typer.main.get_command(app)
    name = "peering"
    parent: Any = None
    rest = list(args)
    while True:
        try:
            ctx = command.make_context(name, rest, parent=parent)
        except Exit as done:  # --help and friends stop parsing, cleanly
            code = done.exit_code
            if code != 0:
                raise AssertionError(f"peering {' '.join(args)} exits {code}") from None
            return
        except TyperException as error:
            message = getattr(error, "format_message", error.__str__)()
            raise AssertionError(f"peering {' '.join(args)}: {message}") from None
        if not isinstance(command, TyperGroup):
            return
        # click keeps the verb apart from its arguments (``_protected_args`` in typer's copy).
        protected = getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", [])
        remaining = [*protected, *ctx.args]
        if not remaining:
            return
        try:
            sub_name, sub, rest = command.resolve_command(ctx, remaining)
        except TyperException as error:
            raise AssertionError(f"peering {' '.join(args)}: {error}") from None
        assert sub is not None, f"no verb {remaining[0]!r}"
        assert sub_name is not None
        command, name, parent = sub, sub_name, ctx


def check_script(script: str) -> None:
    path = REPO / script
    assert path.is_file(), f"{script} does not exist"
    assert os.access(path, os.X_OK) or path.suffix == ".py", f"{script} is not executable"


def check_repo_paths(argv: list[str]) -> None:
    """Arguments that name files of this repository must exist (globs and placeholders aside)."""
    for arg in argv[1:]:
        value = arg.split("=", 1)[-1] if arg.startswith("-") else arg
        if value.startswith(REPO_DIRS) and not re.search(r"[*?<>{$]|NAME|\.\.\.", value):
            assert (REPO / value).exists(), f"{value} does not exist in the repository"


def check_argv(argv: list[str]) -> None:
    argv = strip_prefixes(argv)
    if not argv:
        return  # a plain assignment: TOKEN=$(...) (the substitution is checked on its own)
    program, args = argv[0], argv[1:]
    if program in PEERING:
        check_peering(args)
    elif program == "make":
        targets = [a for a in args if not a.startswith("-") and "=" not in a]
        missing = set(targets) - make_targets()
        assert not missing, f"make targets {sorted(missing)} are not in the Makefile"
    elif program in PYTHONS or program in SHELLS:
        if args and args[0] == "-m":
            if args[1:2] == ["agent"]:
                check_peering(args[2:])
            return
        scripts = [a for a in args if not a.startswith("-")]
        assert scripts, f"{program} without a script"
        check_script(scripts[0])
        check_repo_paths(scripts)
    elif program.startswith(REPO_DIRS):
        check_script(program)
        check_repo_paths(argv)
    elif program == "docker" and args[:1] == ["compose"]:
        check_repo_paths(["docker", *(a for a in args if not a.startswith("-"))])
    else:
        known = program in EXTERNAL_TOOLS or shutil.which(program) is not None
        assert known, f"unknown program {program!r} (add it to EXTERNAL_TOOLS if it is real)"
        check_repo_paths(argv)


ALL_COMMANDS = [c for path in DOC_FILES if path.is_file() for c in extract_commands(path)]


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=[c.where for c in ALL_COMMANDS])
def test_doc_command_is_valid(command: DocCommand) -> None:
    """Each command of the docs parses against the real CLI, Makefile and repository files."""
    try:
        argvs = simple_commands(command.text)
    except ValueError as error:
        raise AssertionError(f"{command.where}: not valid shell: {error}") from None
    for argv in argvs:
        try:
            check_argv(argv)
        except AssertionError as error:
            raise AssertionError(f"{command.where}: {command.text}\n  {error}") from None


RUN_COMMANDS = [c for c in ALL_COMMANDS if c.run]


@pytest.mark.parametrize("command", RUN_COMMANDS, ids=[c.where for c in RUN_COMMANDS])
def test_marked_doc_command_runs(command: DocCommand) -> None:
    """Commands marked ``<!-- docs-test: run -->`` run from the repository root with exit 0."""
    env = cli_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-c", command.text],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{command.where}: {command.text}\n{done.stdout}\n{done.stderr}"


def test_docs_have_commands_and_some_are_run() -> None:
    """The extractor finds the README's commands, and at least one doc command is really run."""
    readme = [c.text for c in ALL_COMMANDS if c.path.name == "README.md" and c.path.parent == REPO]
    assert any(text.startswith("make demo") for text in readme)
    assert RUN_COMMANDS, f"no block is marked {RUN_MARKER}"


# --- the extractor itself -------------------------------------------------------------------

SAMPLE = """\
Prose with `peering nonsense` inline is not a command.

<!-- docs-test: run -->
```sh
# a comment line
PEERING_HTTP_ADDR=127.0.0.1:8501 peering list   # trailing comment
TOKEN=$(peering generate-token --name west) && echo "$TOKEN"
peering agent --name east \\
    --kafka 127.0.0.1:9092 &
```

```console
$ peering --help
Usage: peering [OPTIONS] COMMAND [ARGS]...
```

```
peering not-a-shell-block
```
"""


def test_extractor_handles_prefixes_substitutions_continuations_and_prompts(
    tmp_path: Path,
) -> None:
    """Comments, prose, output lines and untagged blocks are skipped; the rest is split right."""
    doc = tmp_path / "doc.md"
    doc.write_text(SAMPLE)
    commands = extract_commands(doc)
    assert [(c.line, c.run) for c in commands] == [(6, True), (7, True), (8, True), (13, False)]
    assert [strip_prefixes(a) for a in simple_commands(commands[0].text)] == [["peering", "list"]]
    assert simple_commands(commands[1].text) == [
        ["TOKEN=SUBSTITUTED"],
        ["echo", "$TOKEN"],
        ["peering", "generate-token", "--name", "west"],
    ]
    assert simple_commands(commands[2].text) == [
        ["peering", "agent", "--name", "east", "--kafka", "127.0.0.1:9092"]
    ]
    for command in commands:
        for argv in simple_commands(command.text):
            check_argv(argv)


def test_checks_refuse_what_does_not_exist() -> None:
    """A wrong verb or option, a missing make target and a missing script each fail."""
    for bad in (
        ["peering", "no-such-verb"],
        ["peering", "list", "--no-such-option"],
        ["make", "no-such-target"],
        ["ops/no-such-script.sh"],
        [".venv/bin/python", "bench/no_such_bench.py"],
        ["definitely-not-a-program-xyz"],
    ):
        with pytest.raises(AssertionError):
            check_argv(bad)
