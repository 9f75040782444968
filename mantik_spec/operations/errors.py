"""The error type of the verbs."""


class UserError(Exception):
    """A problem the user fixes; printed as one line, never with a traceback."""
