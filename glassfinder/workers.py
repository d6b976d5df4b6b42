"""Child processes that end with their parent: the guard every worker pool here starts with."""

from __future__ import annotations

import os
import threading
import time


def exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this process when `parent` is no longer its parent.

    A job killed by SIGKILL (a scheduler's timeout, the OOM killer) never tells a process pool's
    workers to stop: they block on a queue nobody writes to any more and keep their memory (and
    the renderer's GL context) for good; two such orphans held 2.7 GB each 90 minutes after
    their job was killed. `parent` comes from the parent itself (os.getpid() in the initargs):
    it may die while this worker is still importing."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
