"""`python -m server <command> ...`: the server package's entry points."""

import sys

from playmodel import run_package_command

if __name__ == "__main__":
    sys.exit(run_package_command("server", sys.argv[1:]))
