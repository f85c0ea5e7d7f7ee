"""The one exception type for problems a user can fix."""


class UserInputError(Exception):
    """Bad input from the user: a missing folder, an unreadable image, a value out of range.

    The message names the file, key or value and says what to do. Command-line entry points print it
    without a traceback and exit non-zero.
    """
