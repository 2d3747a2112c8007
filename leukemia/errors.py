"""The one error type that reaches the user as a single line (no traceback)."""


class UserError(Exception):
    """Bad input the user can fix: the message names the file/key/value and the fix."""

    def one_line(self) -> str:
        """The message alone, also when a DataLoader worker re-raised it wrapped in the worker's traceback
        (torch rebuilds the exception from that text, whose last line is ``module.UserError: message``)."""
        last = str(self).strip().splitlines()[-1]
        return last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: ")
