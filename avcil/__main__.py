"""`python -m avcil ...` (and so `torchrun ... -m avcil ...`): the same command line as `avcil`."""

import sys

from avcil.cli import main

sys.exit(main())
