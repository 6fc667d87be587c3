"""The one base of the errors that bad input causes (a damaged file, a missing device, a corrupt model dir): the
command line reports these as one line, never a traceback."""


class AvcilError(Exception):
    pass
