"""The one error type the exporter raises for anything the user can fix."""

from __future__ import annotations


class ExportError(ValueError):
    """A checkpoint, option or repository state that prevents an export.

    The message is a single line that says what is wrong and what to do about it; the CLI
    prints it as is and exits non-zero. Raising it guarantees nothing was written.
    """
