"""The stdio transport of downstreams: the SDK's ``stdio_client`` with a reader that no single
server's stdout can turn against the gateway (issue 15 item 9, issue 16 item 6).

The SDK's reader, used as-is, let one downstream degrade every other one:

- it re-joins its whole buffer with each chunk (``(buffer + chunk).split("\\n")``), so a line with
  no newline costs quadratic CPU: a 200 MB line took 88% of a core and every call's p50 went from
  6 to 426 ms;
- it logs each line that is not JSON-RPC with a full traceback (96 MB of log in 10 s);
- it decodes strictly, so a single 0xff byte ended the connection;
- a server that exits ends the session with "Connection closed", whatever its exit code.

Here lines are cut from bytes (the newline is searched only in the new chunk), a line is bounded
(``max_line_bytes``, the ``downstream_max_line_bytes`` setting): a server that writes a longer one
has its connection ended at once, which its supervisor logs in one line and restarts it after the
usual backoff. Bytes that are not UTF-8 are replaced (U+FFFD), lines that are not JSON-RPC are
skipped, and both are logged at most once per ``LOG_INTERVAL`` seconds per server, one line naming
the server, with the count of those left out (per connection: a server restarted in a loop logs
once per restart, which the backoff spaces). Past ``SKIPPED_PER_SECOND`` skipped lines a second,
that server's stdout is read no faster (it waits on its full pipe). When stdout ends without the
gateway asking, the transport raises ``ConnectionEnded`` saying how the process ended (its exit
code or signal): the supervisor notices at once (not at the next ping), and ``/health`` and the
tool errors say why.

Everything else is the SDK's, unchanged: the streams (``SessionMessage`` in and out, no read-ahead
while a delivery waits), the writer, the environment, and the shutdown sequence (close stdin, a
2 s grace, SIGTERM to the process group, SIGKILL 2 s later; all shielded and bounded). Those come
from ``mcp.client.stdio``'s private helpers, touched here only; tests/test_downstream_stdio.py
fails when they change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any, TextIO

import anyio
import anyio.lowlevel
import mcp_types
from anyio.abc import ByteReceiveStream
from anyio.streams.memory import MemoryObjectSendStream
from mcp import StdioServerParameters
from mcp.client.stdio import (  # the SDK's private process handling (see the module docstring)
    PROCESS_TERMINATION_TIMEOUT,
    _create_platform_compatible_process,
    _get_executable_command,
    _stop_server_process,
    get_default_environment,
)
from mcp.shared.message import SessionMessage

from pml_gateway.observability import named_stderr
from pml_gateway.proxy.downstream import errors

__all__ = ["DEFAULT_MAX_LINE_BYTES", "LOG_INTERVAL", "StdioTransport"]

logger = logging.getLogger(__name__)

#: Longest stdout line (one JSON-RPC message) a downstream may write, by default: 16 MiB, the
#: same bound as a ``POST /executions`` body; large tool results (a base64 file) stay well within.
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024

#: At most one log line per server per this many seconds about its stdout's bad lines.
LOG_INTERVAL = 10.0

#: Lines a server may write that are skipped (not JSON-RPC, or empty) per ``SKIP_WINDOW`` seconds
#: before its stdout is read no faster: what one misbehaving server can cost the event loop.
SKIPPED_PER_SECOND = 1000
SKIP_WINDOW = 1.0

#: Longest excerpt of an offending line quoted in a log line.
EXCERPT = 200

# Same window as the SDK's writer flush before stdin closes.
_WRITER_FLUSH_TIMEOUT = 0.5


class _ThrottledLog:
    """One warning per ``interval`` seconds for one server; what was left out is counted."""

    def __init__(self, server: str, interval: float = LOG_INTERVAL) -> None:
        self.server = server
        self.interval = interval
        self._last = -float("inf")
        self._left_out = 0

    def warn(self, problem: str, line: bytes | bytearray) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        more = f"; {self._left_out} more such lines in the last {self.interval:g} s" if self._left_out else ""
        self._last, self._left_out = now, 0
        sample = bytes(line[:EXCERPT]).decode(errors="replace") + ("..." if len(line) > EXCERPT else "")
        logger.warning(
            "downstream %r wrote %s to stdout (stdout is the protocol; logs belong on stderr): %r%s",
            self.server,
            problem,
            sample,
            more,
            extra={"server": self.server, "stream": "stdout"},
        )


class StdioTransport:
    """``async with StdioTransport(...) as (read, write)``: a downstream over its stdin/stdout.

    ``ended`` says, once the connection ended on the server's side, how (its exit code, or the
    line limit it broke); ``None`` while it lives or when the gateway closed it.
    """

    def __init__(
        self,
        params: StdioServerParameters,
        *,
        server: str,
        copy_stderr_to: TextIO | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        self.params = params
        self.server = server
        self.copy_stderr_to = copy_stderr_to
        self.max_line_bytes = max_line_bytes
        self.ended: str | None = None
        self._log = _ThrottledLog(server)
        self._context: Any = None

    async def __aenter__(self) -> tuple[Any, Any]:
        self._context = self._open()
        return await self._context.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._context.__aexit__(*exc_info)

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[tuple[Any, Any]]:
        # The SDK's stdio_client, with its reader replaced; the rest follows it line by line.
        params = self.params
        command = await _get_executable_command(params.command)
        # observability: the child's stderr lines are logged with the server's name (logs.py)
        with named_stderr(self.server, copy_to=self.copy_stderr_to) as errlog:
            process = await _create_platform_compatible_process(
                command=command,
                args=params.args,
                env=get_default_environment() | (params.env or {}),
                errlog=errlog,
                cwd=params.cwd,
            )
        # No awaits until the task group is entered: a cancellation in the gap would leak the process.
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
        writer_done = anyio.Event()
        closing = False

        async def stdout_reader() -> None:
            assert process.stdout is not None
            async with read_writer:
                try:
                    await self._read_lines(process.stdout, read_writer)
                except anyio.EndOfStream:
                    pass
                except errors.ConnectionEnded:
                    if closing:  # a line over the limit while we close anyway: nothing to report
                        return
                    raise
                except (anyio.ClosedResourceError, anyio.BrokenResourceError, ConnectionError, OSError):
                    if closing:
                        # the session is gone (our shutdown): drain, so a server flushing its
                        # output is not blocked on a full pipe and can exit in its grace period
                        await _drain(process.stdout)
                        return
                if not closing:
                    # stdout ended without us asking: say how the process ended, before the
                    # session hears of it (calls in flight read ``ended``)
                    why = await _how_it_ended(process, errors.pipe_closed("stdout"))
                    if not closing:  # (unless we began closing meanwhile)
                        raise errors.ConnectionEnded(self._end(why))

        async def stdin_writer() -> None:
            assert process.stdin is not None
            try:
                async with write_reader:
                    async for message in write_reader:
                        data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                        await process.stdin.send(data.encode())
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                if not closing:
                    # The process died or closed its stdin: end the connection saying which
                    # (the SDK closes the read stream: the calls in flight would not know why).
                    why = await _how_it_ended(process, errors.pipe_closed("stdin"))
                    if not closing:
                        raise errors.ConnectionEnded(self._end(why)) from None
            finally:
                writer_done.set()

        async def shutdown() -> None:
            read_stream.close()  # unblocks the reader into its drain
            write_stream.close()
            with anyio.move_on_after(_WRITER_FLUSH_TIMEOUT):
                await writer_done.wait()
            await _stop_server_process(process)
            for stream in (read_stream, write_stream, read_writer, write_reader):
                await stream.aclose()
            await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stdout_reader)
            tg.start_soon(stdin_writer)
            try:
                yield read_stream, write_stream
            finally:
                closing = True
                # Shielded and bounded inside: a cancelled caller never leaks the process.
                with anyio.CancelScope(shield=True):
                    await shutdown()
                tg.cancel_scope.cancel()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def _read_lines(
        self, stdout: ByteReceiveStream, deliver: MemoryObjectSendStream[SessionMessage | Exception]
    ) -> None:
        """Deliver each stdout line as a message until stdout ends (``EndOfStream``).

        Raises ``ConnectionEnded`` for a line longer than ``max_line_bytes``.
        """
        limit = self.max_line_bytes
        buffer = bytearray()
        skipped, window_end = 0, anyio.current_time() + SKIP_WINDOW
        while True:
            chunk = await stdout.receive()
            # Skipped lines are never delivered, and a read that finds data buffered does not
            # yield: without a pause, a server writing garbage would hold the event loop (the
            # other servers' p50 went from 8 to 72 ms). Past SKIPPED_PER_SECOND lines, reading
            # pauses until the second is over: that server waits on its full pipe, nobody else.
            now = anyio.current_time()
            if now >= window_end:
                skipped, window_end = 0, now + SKIP_WINDOW
            elif skipped > SKIPPED_PER_SECOND:
                await anyio.sleep(window_end - now)
                skipped, window_end = 0, anyio.current_time() + SKIP_WINDOW
            else:
                await anyio.lowlevel.checkpoint()
            start = 0
            newline = chunk.find(b"\n")
            while newline != -1:
                if len(buffer) + newline - start > limit:
                    raise errors.ConnectionEnded(self._end(errors.line_too_long(limit)))
                if buffer:
                    buffer += chunk[start:newline]
                    line: bytes | bytearray = buffer
                    buffer = bytearray()
                else:
                    line = chunk[start:newline]
                message = self._parse(line)
                if message is not None:
                    await deliver.send(message)  # one at a time: no read-ahead while it waits
                else:
                    skipped += 1
                start = newline + 1
                newline = chunk.find(b"\n", start)
            if len(buffer) + len(chunk) - start > limit:
                raise errors.ConnectionEnded(self._end(errors.line_too_long(limit)))
            buffer += chunk[start:]

    def _parse(self, line: bytes | bytearray) -> SessionMessage | None:
        """One line as a message; ``None`` (logged, throttled) for a line that is not one."""
        if not line or line.isspace():
            return None
        # Every JSON-RPC message is an object: anything else is refused without the parser.
        if line[:1] != b"{" and line.lstrip()[:1] != b"{":
            self._log.warn("a line that is not JSON-RPC (skipped)", line)
            return None
        try:
            text = line.decode()
        except UnicodeDecodeError:
            self._log.warn("bytes that are not UTF-8 (replaced by U+FFFD)", line)
            text = line.decode(errors="replace")
        try:
            return SessionMessage(mcp_types.jsonrpc_message_adapter.validate_json(text, by_name=False))
        except ValueError:  # pydantic's ValidationError included: not JSON, or not JSON-RPC
            self._log.warn("a line that is not JSON-RPC (skipped)", line)
            return None

    def _end(self, why: str) -> str:
        self.ended = why
        return why


async def _how_it_ended(process: Any, if_alive: str) -> str:
    """The exit code (or signal) of a process whose pipe broke; ``if_alive`` when it did not exit
    within the grace period."""
    deadline = anyio.current_time() + PROCESS_TERMINATION_TIMEOUT
    while process.returncode is None and anyio.current_time() < deadline:
        await anyio.sleep(0.01)
    return if_alive if process.returncode is None else errors.process_exited(process.returncode)


async def _drain(stdout: ByteReceiveStream) -> None:
    """Read and drop the rest of stdout (shielded) until the shutdown closes the pipe."""
    with anyio.CancelScope(shield=True):
        with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            while True:
                await stdout.receive()
