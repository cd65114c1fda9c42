"""User-facing errors: one line that names the file or case and what is wrong."""

from __future__ import annotations

import functools
import sys


class SmitunetError(Exception):
    """An error the user can act on. CLIs print its message on one line and exit non-zero."""


class DatasetIntegrityError(SmitunetError):
    """A raw dataset failed its checks; ``problems`` holds one line per fault."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(f"dataset integrity check failed ({len(self.problems)} problem(s)):\n"
                         + "\n".join(self.problems))


class BadInputError(SmitunetError):
    """One input case (or image) failed its checks: skipped by default, fatal under --strict. Its message is one
    line naming the case; ``problems`` holds each fault."""

    def __init__(self, case: str, problems: list[str]):
        self.case = case
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))

    def __reduce__(self):  # raised in worker processes too
        return type(self), (self.case, self.problems)


class CasesFailedError(SmitunetError):
    """Some cases were skipped (their faults were logged one line each); the others were processed."""

    def __init__(self, message: str, failed: dict[str, str], done: list | None = None):
        self.failed = dict(failed)
        self.done = list(done or [])
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.failed, self.done)


def cli_entry(func):
    """Decorate a CLI ``main``: library messages are logged to stdout/stderr, and a SmitunetError becomes
    ``error: ...`` on stderr and exit code 2 (only CLIs turn errors into exit codes)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from smitunet.utils.log import configure_cli_logging

        configure_cli_logging()
        try:
            return func(*args, **kwargs)
        except SmitunetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:
            # A backstop for faults of the system (permissions, a full disk, a file-size limit) that no library
            # call turned into a SmitunetError: still one line naming the file, never a traceback.
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
