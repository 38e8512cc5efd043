"""pid_alive: the one liveness check of the Lite endpoint, the index lease and the local server."""

import os
import subprocess
import sys

from vitsearch.search.processes import pid_alive


def test_a_running_process_is_alive_and_a_reaped_one_is_not():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now (until the kernel reuses it)
    assert not pid_alive(child.pid)


def test_a_pid_from_a_damaged_record_is_no_process():
    # kill(0, 0) and kill(-1, 0) would succeed: they address process groups, not a process.
    assert not pid_alive(0)
    assert not pid_alive(-1)
    assert not pid_alive(-os.getpgid(0))
