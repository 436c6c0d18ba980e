"""Process logging: one set-up for the CLI and for every worker process.

Lines go to stderr through :class:`BatchingHandler`: a line per request (the access log) is
part of the per-request cost, so lines are formatted with a timestamp cached per second and
written in batches (when 64 KiB are pending, 0.25 s after the first pending line, at once
for warnings and errors, and at exit), instead of one ``write`` per line.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class FastFormatter(logging.Formatter):
    """``asctime`` as ``YYYY-mm-dd HH:MM:SS,mmm``, with the seconds part formatted once per
    second rather than per line."""

    def __init__(self, fmt: str = _FORMAT) -> None:
        super().__init__(fmt)
        self._second = -1
        self._prefix = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
        return f"{self._prefix},{int(record.msecs):03d}"


class BatchingHandler(logging.Handler):
    """Formats records at once, writes them to a file descriptor in batches."""

    def __init__(self, fd: int = 2, max_bytes: int = 64 * 1024, max_delay: float = 0.25) -> None:
        super().__init__()
        self._fd = fd
        self._max_bytes = max_bytes
        self._max_delay = max_delay
        self._pending: list[bytes] = []
        self._size = 0
        self._first_at = 0.0
        self._timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        with self.lock:  # type: ignore[union-attr]
            if not self._pending:
                self._first_at = time.monotonic()
                self._arm()
            self._pending.append(line)
            self._size += len(line)
            due = (
                record.levelno >= logging.WARNING
                or self._size >= self._max_bytes
                or time.monotonic() - self._first_at >= self._max_delay
            )
        if due:
            self.flush()

    def _arm(self) -> None:
        """A flush at the latest ``max_delay`` after the first pending line, even when no
        further line comes (a timer thread, started only while lines are pending)."""
        if self._timer is None:
            self._timer = threading.Timer(self._max_delay, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            data = b"".join(self._pending)
            self._pending.clear()
            self._size = 0
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        while data:
            try:
                written = os.write(self._fd, data)
            except InterruptedError:
                continue
            except OSError:
                return  # stderr is gone: nothing sensible to do
            data = data[written:]

    def close(self) -> None:
        self.flush()
        super().close()


_configured: BatchingHandler | None = None


def configure(level: str) -> None:
    """Root logging at ``level`` (``GATEWAY_LOG_LEVEL``) to stderr, once per process."""
    global _configured
    root = logging.getLogger()
    root.setLevel(level.upper())
    if _configured is not None:
        return
    # The logging HOWTO's "Optimization": the format never shows the caller's file and line,
    # thread or process, so do not collect them for every record (the access log writes
    # one per request).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingHandler()
    handler.setFormatter(FastFormatter())
    root.addHandler(handler)
    _configured = handler
    atexit.register(handler.flush)
