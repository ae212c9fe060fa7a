"""``python -m ugodit_pl`` runs the ``ugodit`` command."""

import sys

from ugodit_pl.apps.cli import main

sys.exit(main())
