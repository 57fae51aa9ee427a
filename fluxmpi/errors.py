"""The one base of every error fluxmpi raises, so a caller can catch them all (`except FluxmpiError`).

Each error also derives from the built-in that says what kind it is: bad input (a value to change) is a
ValueError, and the CLI exits 2 for it; something that failed while running is a RuntimeError (exit 1).
Messages name the bad value, or the task, rank and node, and say how to fix it.
"""


class FluxmpiError(Exception):
    """Base of fluxmpi's errors."""


def exit_code(err: BaseException) -> int:
    """The CLI's exit code for an error: 2 for bad input (ValueError), else 1."""
    return 2 if isinstance(err, ValueError) else 1
