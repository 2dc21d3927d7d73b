"""User-facing errors.

Anything a person can fix (a missing file, a malformed record, a bad option) raises
:class:`DeltalensError` with one line that names the file, tensor or field and what was
expected. The CLI prints that line and exits non-zero without a traceback; library users
catch it like any exception.
"""


class DeltalensError(Exception):
    """An error caused by the user's input; its message is one actionable line."""

    exit_code = 2
