"""The main job: `python -m baselines.demo` (= `llm-coop demo`); see `baselines/cli.py`."""

import sys

from baselines.cli import demo_main

if __name__ == "__main__":
    demo_main(sys.argv[1:])
