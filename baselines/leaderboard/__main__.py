"""``python -m baselines.leaderboard``: see :mod:`baselines.leaderboard`."""

import sys

from baselines.leaderboard.cli import main

raise SystemExit(main(sys.argv[1:]))
