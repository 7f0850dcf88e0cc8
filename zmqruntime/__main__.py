"""``python -m zmqruntime`` runs the CLI (this is also how servers are spawned)."""

import sys

from .cli import main

sys.exit(main())
