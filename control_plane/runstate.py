"""What a running ``devart up`` tells the other ``devart`` commands: a file in ``DEVART_HOME``.

``devart status`` and the CLI's default API URL read it; ``devart down`` stops the process it
names. It holds the broker URL with its credentials, so only its owner may read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

FILE = "up.json"


@dataclass(frozen=True)
class RunState:
    pid: int
    api_url: str
    amqp_url: str
    broker_prefix: str
    installation: str
    started_at: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def path(home: Path) -> Path:
    return home / FILE


def write(home: Path, state: RunState) -> None:
    home.mkdir(parents=True, exist_ok=True)
    target = path(home)
    temporary = target.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(state), out)
    temporary.replace(target)


def read(home: Path) -> RunState | None:
    try:
        return RunState(**json.loads(path(home).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def clear(home: Path, pid: int) -> None:
    """Remove the file if it still describes process ``pid``."""
    state = read(home)
    if state is not None and state.pid == pid:
        path(home).unlink(missing_ok=True)
