"""python -m harness.leaderboard: see harness/leaderboard/__init__.py."""

import sys

from harness.leaderboard.cli import main

sys.exit(main())
