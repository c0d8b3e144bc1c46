"""The README is a promise: every manifest in it validates, every command in it parses.

Manifests go through the server's own loader (and the push-time check that
no two resources manage one object); commands through the real argument
parsers of ``plumb``, ``plumb-server`` and ``plumb-agent``, so a renamed
flag or a README typo fails here. That the commands also *work* is what the
demo (``make demo``), the integration tests and the system tests show.
"""

from __future__ import annotations

import argparse
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import main as agent_main
from server import cli
from server import main as server_main
from server.compiler import collisions_within
from server.manifest import load

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# A manifest fragment (a list of resources) is checked inside this.
HEADER = "name: readme\ntarget: {all: true}\nresources:\n"


def blocks(language: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every fenced block of ``language`` in the README."""
    text = README.read_text()
    for match in FENCE.finditer(text):
        if match.group(1) == language:
            yield text.count("\n", 0, match.start()) + 2, match.group(2)


def test_the_readme_has_manifests_and_commands_to_check() -> None:
    assert len(list(blocks("yaml"))) >= 2
    assert len(list(commands())) >= 8


@pytest.mark.parametrize(("line", "text"), list(blocks("yaml")), ids=lambda v: str(v)[:12])
def test_every_manifest_in_the_readme_validates(line: int, text: str) -> None:
    whole = text if text.startswith("name:") else HEADER + text
    manifest = load(f"README.md:{line}", whole)
    assert manifest.resources
    assert collisions_within([manifest]) == []


PARSERS: dict[str, argparse.ArgumentParser] = {
    "plumb": cli._parser(),
    "plumb-server": server_main._parser(),
    "plumb-agent": agent_main._parser(),
}


INLINE = re.compile(r"`((?:plumb|plumb-server|plumb-agent) [^`]*)`")
OPTIONAL = re.compile(r"\[[^\[\]]*\]")


def commands() -> Iterator[tuple[int, list[str]]]:
    """Every plumb, plumb-server and plumb-agent command in the README.

    From its shell blocks (also after ``runuser ... --``, ``&&`` or ``|``), and from
    inline code in its prose and tables, where ``[optional parts]`` are left
    out and metavariables (FILE, NODE, HOST) stand as they are.
    """
    for line, text in blocks("sh"):
        joined = text.replace("\\\n", " ")
        for offset, command_line in enumerate(joined.splitlines()):
            # Each command of a line: after "&&", and after a pipe ("printf ... | plumb-agent").
            for part in re.split(r"&&|\|", command_line):
                words = shlex.split(part.split("#", 1)[0])
                # A command, or one run through runuser/sudo after "--".
                words = words[words.index("--") + 1 :] if "--" in words else words
                if words and words[0] in PARSERS:
                    yield line + offset, words
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), README.read_text())
    for match in INLINE.finditer(text):
        command = match.group(1)
        while OPTIONAL.search(command):
            command = OPTIONAL.sub("", command)
        yield text.count("\n", 0, match.start()) + 1, command.split()


@pytest.mark.parametrize(("line", "words"), list(commands()), ids=lambda v: str(v)[:40])
def test_every_command_in_the_readme_parses(line: int, words: list[str]) -> None:
    parser = PARSERS[words[0]]
    try:
        parser.parse_args(words[1:])
    except SystemExit as exc:  # argparse's way of refusing
        if any(word.startswith("-") for word in words) or not _exists(parser, words[1:]):
            raise AssertionError(f"README.md:{line}: {' '.join(words)} does not parse") from exc
        # A bare mention of a command ("`plumb report` shows ..."): it exists.


def _exists(parser: argparse.ArgumentParser, words: list[str]) -> bool:
    """Whether ``words`` name a command of ``parser`` (its --help answers)."""
    try:
        parser.parse_args([*words, "--help"])
    except SystemExit as exc:
        return exc.code == 0
    return False
