"""A bad manifest is refused whole at push, with file:line:field, and nothing is stored."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import write
from tests.integration.harness import Server

GOOD = """\
name: good
target: {all: true}
resources:
  - kind: file
    name: a
    spec: {path: /a, content: "a"}
"""

CASES = {
    "yaml-syntax": ("name: web\ntarget: {all: true\nresources: []\n", 3, ""),
    "unknown-kind": (
        "name: web\ntarget: {all: true}\nresources:\n"
        "  - kind: nosuchkind\n    name: x\n    spec: {}\n",
        4,
        "resources[0].kind",
    ),
    "wrong-type": (
        "name: web\ntarget: {all: true}\nresources:\n"
        "  - kind: file\n    name: x\n    spec:\n      path: /x\n      mode: 644\n",
        8,
        "resources[0].spec.mode",
    ),
    "bad-firewall-rule": (
        "name: web\ntarget: {all: true}\nresources:\n"
        "  - kind: firewall\n    name: edge\n    spec:\n      table: plumb\n"
        "      chains:\n        - name: input\n          hook: input\n"
        "          rules:\n            - {protocol: tcp, dport: 99999, action: accept}\n",
        12,
        "resources[0].spec.chains[0].rules[0].dport",
    ),
    "dangling-require": (
        "name: web\ntarget: {all: true}\nresources:\n"
        "  - kind: file\n    name: x\n    spec: {path: /x}\n"
        "    require: [file/nope]\n",
        7,
        "resources[0].require[0]",
    ),
    "require-cycle": (
        "name: web\ntarget: {all: true}\nresources:\n"
        "  - kind: file\n    name: x\n    spec: {path: /x}\n"
        "    require: [file/y]\n"
        "  - kind: file\n    name: y\n    spec: {path: /y}\n"
        "    require: [file/x]\n",
        11,
        "resources[1].require[0]",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_manifest_is_refused_with_file_line_field(
    server: Server, tmp_path: Path, case: str
) -> None:
    text, line, field = CASES[case]
    good = write(tmp_path / "good.yaml", GOOD)
    bad = write(tmp_path / f"{case}.yaml", text)
    result = server.push(good, bad)
    assert result.returncode == 1
    assert f"{bad}:{line}: {field + ': ' if field else ''}" in result.stderr, result.stderr
    assert "nothing was stored" in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing stored, not even the good manifest pushed alongside: the next
    # successful push is the first revision.
    ok = server.push(good)
    assert ok.returncode == 0 and "revision 1" in ok.stdout
