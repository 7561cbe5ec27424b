"""The one exception type for bad input: the CLI prints its message as a single line."""


class UserError(ValueError):
    """Bad input from the user (a path, a shape, a config); the message names the fix."""
