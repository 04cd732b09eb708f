"""User-facing errors: one line that says what to fix, printed by the CLI without a traceback."""


class BioformerError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""
