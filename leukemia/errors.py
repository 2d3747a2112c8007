"""The one error type that reaches the user as a single line (no traceback)."""


class UserError(Exception):
    """Bad input the user can fix: the message names the file/key/value and the fix."""
