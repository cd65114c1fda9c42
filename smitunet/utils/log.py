"""Messages of library code go to the ``smitunet`` logger; the CLIs (``errors.cli_entry``) configure it.

Once configured, INFO goes to stdout and WARNING and above to stderr, as the prints they replaced did. Used as a
library without a CLI, Python's defaults apply: warnings reach stderr, information is dropped unless the caller
configures logging (``configure_cli_logging`` or its own handlers).
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("smitunet")


class _StandardStreams(logging.Handler):
    """Writes to whatever ``sys.stdout`` / ``sys.stderr`` are at the time (test captures, redirections)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001  (logging must never raise into the caller)
            self.handleError(record)


def configure_cli_logging(level: int = logging.INFO) -> None:
    """Idempotent: one handler on the ``smitunet`` logger, plain messages."""
    if not any(isinstance(h, _StandardStreams) for h in logger.handlers):
        handler = _StandardStreams()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
