"""The one exception type for user mistakes, and the error boundary every entry point runs in: the
CLIs print its message as one `error:` line (no traceback unless --debug) and exit 2; a Ctrl-C at
any moment inside the boundary is one `interrupted` line and exit 130."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

USER_ERROR_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class UserError(Exception):
    """Bad input from the user: a config key, a file, a value. The message names the culprit."""

    exit_code = USER_ERROR_EXIT


class Interrupted(UserError):
    """A Ctrl-C the command caught to say what it leaves behind (the message) and how to go on."""

    exit_code = INTERRUPTED_EXIT


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage mistakes are one `error:` line and exit 2, like every other user mistake."""

    def error(self, message: str):
        self.exit(USER_ERROR_EXIT, f"error: {message} (see {self.prog} --help)\n")


def interrupt_exits_while_importing() -> None:
    """Before an entry point's boundary exists (`python -m raydigits.train` / `.data`, the installed
    `raydigits` command: their modules import torch, seconds): a Ctrl-C is one line and exit 130,
    not a KeyboardInterrupt traceback from inside an import. `guarded` takes over from there."""

    def interrupted(signum, frame):
        print("\ninterrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED_EXIT)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, interrupted)


def run_command(parse: Callable[[], argparse.Namespace], run: Callable[[argparse.Namespace], int]) -> int:
    """An entry point's main: parse its arguments (a Ctrl-C there: one line and 130 too), then run
    the command inside the boundary (`guarded`, with the command's --debug)."""
    try:
        args = parse()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    return guarded(lambda: run(args), args.debug)  # Ctrl-C at any moment of it: exit 130


def guarded(run: Callable[[], int], debug: bool = False) -> int:
    """Run an entry point's work: a UserError, or an OSError on a file the user named (unreadable,
    a folder where a file was expected, disk full), becomes one `error:` line and exit 2; with
    `debug` the traceback is shown instead. A Ctrl-C (KeyboardInterrupt) anywhere in `run`, start-up
    included, is one line and exit 130."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C is a KeyboardInterrupt again
    try:
        return run()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Interrupted as exc:
        print(f"\ninterrupted: {exc}", file=sys.stderr)
        return exc.exit_code
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
