"""Whether a process runs: the one check behind the Lite endpoint, the index lease and the
local server's record (each asks about a pid that a crashed process may have left behind)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (``kill(pid, 0)``: one owned by
    another user counts as alive; a pid reused by another program is not told apart here). A pid
    that is not positive (read from a damaged record: ``kill`` would signal a process group) is
    no process."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
