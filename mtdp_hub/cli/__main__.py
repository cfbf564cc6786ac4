"""``python -m mtdp_hub.cli`` is the ``mtdp`` command."""

import sys

from . import main

sys.exit(main())
