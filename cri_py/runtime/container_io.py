"""Exec and I/O into a running container: ExecSync, streamed exec and attach (file descriptors
handed to the pod's shim, so a session's bytes never cross the daemon), terminals in the
container's own devpts, closing stdin after an attach, and ReopenContainerLog.

The streaming server reaches these through `cri_py.streaming.requests.Runtime`.
"""

from __future__ import annotations

import asyncio
import os

from cri_py.errors import DeadlineExceeded, Internal, InvalidArgument
from cri_py.linux.terminal import open_pty
from cri_py.log import get_logger
from cri_py.runtime.container_table import ContainerTable
from cri_py.shim.client import ShimError

log = get_logger("cri_py.containers")


class ContainerIO:
    def __init__(self, table: ContainerTable) -> None:
        self._table = table

    def exec_sync(
        self, container_id: str, command: tuple[str, ...], timeout: int
    ) -> tuple[bytes, bytes, int]:
        record = self._table.running(container_id)
        if not command:
            raise InvalidArgument("ExecSync needs a command")
        # The shim enforces `timeout`; ours only guards against a shim that never answers.
        # An int64 beyond a year is "no timeout" (sockets cannot wait that long: OverflowError).
        year = 365 * 24 * 3600
        timeout = timeout if 0 < timeout < year else 0
        call_timeout = timeout + 30.0 if timeout > 0 else float(year)
        try:
            result = self._table.shim(record.sandbox_id).exec(
                record.id, command, timeout, call_timeout
            )
        except ShimError as e:
            if e.kind == "timeout":
                raise DeadlineExceeded(
                    f"command {list(command)} timed out after {timeout}s in container "
                    f"{record.id} (killed)"
                ) from e
            raise Internal(f"exec in container {record.id}: {e}") from e
        return result.stdout, result.stderr, result.exit_code

    async def exec_stream(
        self, container_id: str, command: tuple[str, ...], tty: bool, stdio: list[int]
    ) -> int:
        """Runs `command` in the container with `stdio` (stdin, stdout, stderr; a terminal's
        slave thrice with `tty`) handed to the pod's shim, and returns its exit code. The fds
        are sent before the first await that can take long: the caller may close its copies
        as soon as the command started, which this does not wait for."""
        record = self._table.running(container_id)
        if not command:
            raise InvalidArgument("Exec needs a command")
        try:
            result = await self._table.shim(record.sandbox_id).exec_stream(
                record.id, command, tty, stdio
            )
        except ShimError as e:
            raise Internal(f"exec in container {record.id}: {e}") from e
        return result.exit_code

    def open_terminal(self, container_id: str) -> tuple[int, int]:
        """(master, slave) of a new terminal in the container's own devpts; one of the
        daemon's when the container has none (the command then sees no name for it)."""
        record = self._table.running(container_id)
        try:
            return open_pty(f"/proc/{record.pid}/root/dev/pts/ptmx")
        except OSError as e:
            log.warning("no terminal in the container's devpts", container=record.id, error=str(e))
            return os.openpty()

    async def attach_stream(self, container_id: str, outputs: dict[str, int], stdin: bool) -> int:
        """Has the pod's shim copy the container's output streams into `outputs` (stream name
        -> pipe write end; the caller closes its copies) until the container exits or the
        pipe's reader goes. Returns a dup of the container's stdin when `stdin` (else -1)."""
        record = self._table.running(container_id)
        try:
            return await self._table.shim(record.sandbox_id).attach(record.id, outputs, stdin)
        except ShimError as e:
            raise Internal(f"attach to container {record.id}: {e}") from e

    async def close_stdin_once(self, container_id: str) -> bool:
        """After an attached client's stdin ended: with stdin_once (and no tty, kubelet's rule)
        the container's stdin is closed, so it sees EOF. True when that is the rule here (the
        client then stays attached to the outputs until the container exits)."""
        record = self._table.status(container_id)
        if not (record.config.stdin_once and not record.config.tty):
            return False
        try:
            await asyncio.to_thread(self._table.shim(record.sandbox_id).close_stdin, record.id)
        except ShimError as e:
            log.warning("closing stdin failed", container=record.id, error=str(e))
            return False
        return True

    def reopen_log(self, container_id: str) -> None:
        record = self._table.running(container_id)
        try:
            self._table.shim(record.sandbox_id).reopen_log(record.id)
        except ShimError as e:
            raise Internal(f"reopening the log of container {record.id}: {e}") from e
