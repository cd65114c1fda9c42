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
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper
