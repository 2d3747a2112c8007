"""The one error type that reaches the user as a single line (no traceback)."""

import errno

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit


class UserError(Exception):
    """Bad input the user can fix: the message names the file/key/value and the fix."""

    def one_line(self) -> str:
        """The message alone, also when a DataLoader worker re-raised it wrapped in the worker's traceback
        (torch rebuilds the exception from that text, whose last line is ``module.UserError: message``)."""
        last = str(self).strip().splitlines()[-1]
        return last.removeprefix(f"{type(self).__module__}.{type(self).__qualname__}: ")


def file_system_error(error: OSError) -> UserError | None:
    """A file the configuration points at that cannot be made, read or written (a missing or read-only folder,
    a full disk) as the one-line error naming it and the cause; None for an OSError about no file."""
    if error.strerror is None or (error.filename is None and error.errno not in NO_SPACE):
        return None
    where = f"{error.filename}: " if error.filename is not None else ""
    return UserError(
        f"{where}{error.strerror.lower()}; make it reachable and writable, or point the setting that names it "
        f"(hydra.run.dir, paths.cache_dir, data.root, tracking.uri) elsewhere"
    )
