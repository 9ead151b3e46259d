"""``python -m mindloop.agents.cli``: the ``mindloop`` command (what ``accelerate launch -m`` runs)."""

import sys

from mindloop.agents.cli import main

sys.exit(main())
