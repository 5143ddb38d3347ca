"""The one exception type for user mistakes: the CLIs print its message (no traceback) and exit 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a value. The message names the culprit."""

    exit_code = 2
