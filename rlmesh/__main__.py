"""``python -m rlmesh`` runs the command line."""

import sys

from rlmesh.cli import main

sys.exit(main())
