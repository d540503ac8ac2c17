"""``python -m signalprop.cli``: the same as the ``signalprop`` script."""

import sys

from . import main

sys.exit(main())
