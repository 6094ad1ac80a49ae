"""Commands that attack an attempt's limits from inside, shared by the limit tests on this host
(``tests/security/test_sandbox_limits.py``) and in the cgroup v2 guest (``tests/agents/sandbox/cgroup_v2_guest.py``)."""

from __future__ import annotations

MEMORY_HOG = "import time\nb = b'x' * (60 * 2**20)\nprint('held', flush=True)\ntime.sleep(4)\n"
"""Python holding 60 MiB for a few seconds; six at once do not fit in 128 MiB."""


def fork_bomb(mark: str) -> str:
    """A script starting 200 ``sleep {mark}`` and saying ``all-started`` if every fork worked."""
    return f"for i in $(seq 200); do sleep {mark} & done; echo all-started"
