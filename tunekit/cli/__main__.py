"""``python -m tunekit.cli``: the ``tunekit`` command (tunekit.launch starts workers this way)."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
