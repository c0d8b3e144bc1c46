"""watch_paths in a child of :mod:`tests.inotify_limits`: what it calls back, said as lines.

    python -m tests.modules.pathwatch_child ROOT POLL_S '{"paths": [...], "contents_of": [...]}'

Paths are spec paths under ROOT. Each ``on_change`` call is said as
``{"change": [look(path), ...]}`` (every path, then every ``contents_of``
directory, as they are at the call), each ``watch_degraded`` call as
``{"degraded": sentence}``. End of input stops the watch; a watch that raises
ends the child with a traceback and a non-zero status.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

from modules.base import Context
from modules.pathwatch import watch_paths
from tests.inotify_limits import commands, emit, look


def main() -> None:
    root, poll_s, spec = Path(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
    ctx = Context(
        root=root,
        log=logging.getLogger("pathwatch_child"),
        watch_degraded=lambda sentence: emit(degraded=sentence),
    )
    paths = [ctx.host_path(path) for path in spec.get("paths", [])]
    contents_of = [ctx.host_path(path) for path in spec.get("contents_of", [])]
    stop = threading.Event()

    def until_the_end() -> None:
        for _ in commands():
            pass
        stop.set()

    threading.Thread(target=until_the_end, daemon=True).start()
    watch_paths(
        ctx,
        paths,
        lambda: emit(change=[look(path) for path in paths + contents_of]),
        stop,
        contents_of=contents_of,
        poll_s=poll_s,
    )


if __name__ == "__main__":
    main()
