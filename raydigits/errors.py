"""The one exception type for user mistakes, and the error boundary every entry point runs in: the
CLIs print its message as one `error:` line (no traceback unless --debug) and exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

USER_ERROR_EXIT = 2


class UserError(Exception):
    """Bad input from the user: a config key, a file, a value. The message names the culprit."""

    exit_code = USER_ERROR_EXIT


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one `error:` line and exit 2, like every other user mistake."""

    def error(self, message: str):
        self.exit(USER_ERROR_EXIT, f"error: {message} (see {self.prog} --help)\n")


def guarded(run: Callable[[], int], debug: bool = False) -> int:
    """Run an entry point's work: a UserError, or an OSError on a file the user named (unreadable,
    a folder where a file was expected, disk full), becomes one `error:` line and exit 2; with
    `debug` the traceback is shown instead."""
    try:
        return run()
    except UserError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        if debug or exc.filename is None:
            raise
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return USER_ERROR_EXIT
