"""``python -m attrsub`` is the same as the ``attrsub`` command."""

import sys

from attrsub.cli import main

sys.exit(main())
