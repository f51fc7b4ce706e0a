"""Helper processes that end with their parent: a forked or spawned child whose parent is killed (SIGKILL, the OOM
killer) exits within a fraction of a second instead of living on, unseen, for minutes.

This matters beyond the child itself: a forked child holds copies of every file its parent had open. The synthetic
corpus painters (a forked process pool) held the driver's end of each LocalCluster worker's parent-alive pipe, by
which distributed ends a worker whose parent is gone; so after a SIGKILL of the driver both the painters and the
workers lived on. Once the painters end with the driver, those pipes close and the workers end too.

A thread that watches os.getppid() rather than Linux's PR_SET_PDEATHSIG: that signal fires when the *thread* that
forked the child ends, not its process, so a child forked from a short-lived thread would be killed early.
"""

from __future__ import annotations

import os
import threading
import time

POLL = 0.2  # seconds between looks at the parent


def exit_with_parent(parent: int) -> None:
    """Call in a child process (e.g. a pool's initializer, with the parent's os.getpid() as argument): the child
    exits as soon as `parent` is no longer its parent, and at once if it already is not."""
    if os.getppid() != parent:  # the parent died before the child got here
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:  # an orphan is adopted by init or a subreaper: its parent id changes
            time.sleep(POLL)
        os._exit(1)  # at once: whoever wanted this child's results is gone, and nothing here needs cleaning up

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
