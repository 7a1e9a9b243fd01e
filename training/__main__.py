"""`python -m training <command> ...`: the training package's entry points."""

import sys

from playmodel import run_package_command

if __name__ == "__main__":
    sys.exit(run_package_command("training", sys.argv[1:]))
