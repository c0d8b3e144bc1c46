"""The agent's watchers when inotify will not watch a managed file: polled, repaired, said.

Real limits and real kinds: the watchers, the file kind and the engine run in
a child that is root of a user namespace of its own, where the test sets how
many inotify watches it may have (:mod:`tests.inotify_limits`,
:mod:`tests.agent.watchers_child`); every managed file is in the test's tmp dir.
The file kind polls at its default, every 2 s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.inotify_limits import Child
from tests.integration.harness import wait_for

NO_WATCH = (
    "inotify would not take a watch (No space left on device: fs.inotify.max_user_watches reached)"
)


def motd_catalog(revision: int = 1) -> dict[str, Any]:
    spec = {"path": "/etc/motd", "content": "hello\n", "mode": "0644"}
    return {"revision": revision, "resources": [{"kind": "file", "name": "motd", "spec": spec}]}


def watching(tmp_path: Path, watches: int) -> Child:
    (tmp_path / "etc").mkdir()
    args = [str(tmp_path), json.dumps(motd_catalog())]
    return Child("tests.agent.watchers_child", args, watches=watches)


def conditions(child: Child) -> list[list[str]]:
    """The watchers' conditions now, as [name, detail]."""
    before = child.count()
    child.send(conditions=True)
    assert child.wait_for(lambda: child.said("conditions", before)), child.stderr()
    answer: list[list[str]] = child.said("conditions", before)[0]
    return answer


def runs(child: Child) -> list[dict[str, Any]]:
    return child.said("run")


def logged(child: Child, level: str) -> list[str]:
    return [message for said, message in child.said("log") if said == level]


def primed(child: Child, path: Path) -> None:
    """Touch ``path`` until a check answers: the watch is in place (before an edit)."""
    checked = "watcher: checked after events; nothing changed"

    def touched_and_checked() -> bool:
        os.utime(path)
        return child.wait_for(lambda: checked in logged(child, "DEBUG"), timeout=0.1)

    wait_for(touched_and_checked, 10, "the watcher to listen")


def test_a_polled_file_is_a_condition_and_its_drift_is_repaired(tmp_path: Path) -> None:
    motd = tmp_path / "etc/motd"
    polling = f"polling {motd} every 2 s: {NO_WATCH}"
    with watching(tmp_path, watches=0) as child:
        assert child.wait_for(lambda: len(runs(child)) == 1), child.stderr()
        assert runs(child)[0]["results"] == {"file/motd": "repaired"}
        wait_for(lambda: conditions(child) == [["watch_polling", f"file: {polling}"]], 10)
        warning = f"watcher of kind 'file' is {polling}"
        assert child.wait_for(lambda: warning in logged(child, "WARNING"))

        motd.write_text("edited by hand\n")  # drift, which only polling can notice
        assert child.wait_for(lambda: len(runs(child)) == 2, timeout=15), child.stderr()
        assert runs(child)[1] == {"trigger": "watch", "results": {"file/motd": "repaired"}}
        assert motd.read_text() == "hello\n"

        child.send(catalog={"revision": 2, "resources": []})  # nothing left to watch
        wait_for(lambda: conditions(child) == [], 10)


def test_the_condition_ends_once_inotify_takes_the_watch(tmp_path: Path) -> None:
    with watching(tmp_path, watches=0) as child:
        wait_for(lambda: [name for name, _ in conditions(child)] == ["watch_polling"], 10)
        child.send(watches=100)  # the operator raises fs.inotify.max_user_watches
        wait_for(lambda: conditions(child) == [], 10)
        info = "watcher of kind 'file' watches everything again, no longer polling"
        assert child.wait_for(lambda: info in logged(child, "INFO"))


def test_a_watched_file_is_no_condition(tmp_path: Path) -> None:
    motd = tmp_path / "etc/motd"
    with watching(tmp_path, watches=100) as child:
        assert child.wait_for(lambda: len(runs(child)) == 1), child.stderr()
        primed(child, motd)
        motd.write_text("edited by hand\n")
        assert child.wait_for(lambda: len(runs(child)) == 2), child.stderr()  # through inotify
        assert conditions(child) == []
        assert not [message for message in logged(child, "WARNING") if "polling" in message]
