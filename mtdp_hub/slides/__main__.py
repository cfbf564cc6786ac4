"""torchrun --nproc_per_node=N -m mtdp_hub.slides --model M --slides S --out O: one rank per device."""

import sys

from ..cli import main

sys.exit(main(['slides', *sys.argv[1:]]))
