"""``python -m sam2_api.cli``: the ``sam2-api`` command."""

import sys

from .commands import main

sys.exit(main())
