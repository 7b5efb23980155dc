"""``python -m llm_coop_leaderboard``: see :mod:`llm_coop_leaderboard`."""

import sys

from llm_coop_leaderboard.cli import main

raise SystemExit(main(sys.argv[1:]))
