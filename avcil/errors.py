"""The one base of the errors that bad input causes (a damaged file, a missing device, a corrupt model dir, a flag
that cannot be used): the command line reports these as one line and exits 2. Anything else is a bug and stays a
traceback.

Each subclass also keeps the builtin base its callers caught before (ValueError, RuntimeError, ImportError), so
`except ValueError` around a library call still works."""


class AvcilError(Exception):
    pass


class InvalidInput(AvcilError, ValueError):
    """A value given by the user (a flag, a setting, a file's contents) that cannot be used; the message says why."""


class MissingPackage(AvcilError, ImportError):
    """An optional package that this command needs is not installed; the message names the pip command."""


class StageFailed(AvcilError, RuntimeError):
    """An external tool or device failed (ffmpeg, a GPU provider, a source that died); the message names it."""


class ModelDirError(AvcilError, RuntimeError):
    """A model dir that cannot be used as asked: a corrupt or missing version, a link inside it, a writer lock held
    by another process; the message names the path and, where there is one, the command that fixes it."""
