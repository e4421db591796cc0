"""The one error class for the user's mistakes: the CLI reports these as one line, everything else as a bug."""


class InputError(ValueError):
    """A mistake in what the user gave: arguments, data, configs, files.

    The CLI reports it as one line naming the culprit, with exit code 2 (no traceback). It is a ValueError subclass,
    so code that catches ValueError, as it would with the reference, keeps working. A ValueError (or any other
    exception) that is not an InputError is an internal bug and keeps its traceback. Calling the Python API with a
    keyword it does not take stays a TypeError, as in Python and the reference.
    """
