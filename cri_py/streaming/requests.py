"""What a streaming URL's token stands for: the validated Exec/Attach/PortForward request, and
what the streaming server needs from the runtime to serve it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ExecRequest:
    container_id: str
    command: tuple[str, ...]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True)
class PortForwardRequest:
    sandbox_id: str
    # The pinned network namespace of the pod; "" for a pod on the host's network.
    netns: str


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


class Runtime(Protocol):
    async def exec_stream(
        self, container_id: str, command: tuple[str, ...], tty: bool, stdio: list[int]
    ) -> int:
        """Runs `command` with `stdio` (the caller keeps and closes its fds); its exit code."""
        ...

    async def attach_stream(self, container_id: str, outputs: dict[str, int], stdin: bool) -> int:
        """Copies the container's output streams into `outputs` (name -> pipe write end, the
        caller keeps its copies); a dup of its stdin when `stdin`, else -1."""
        ...

    async def close_stdin_once(self, container_id: str) -> bool:
        """An attached client's stdin ended: closes the container's stdin with stdin_once and
        no tty, and says whether it did (the client then stays attached to the outputs)."""
        ...

    def open_terminal(self, container_id: str) -> tuple[int, int]:
        """(master, slave) of a new terminal for a command in the container."""
        ...
