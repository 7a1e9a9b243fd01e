"""`python -m client [play] [options]`: the client package's entry points.

The package has one command, `play`, so it is the default: `python -m client --watch URL`
is `python -m client play --watch URL`.
"""

import sys

from playmodel import run_package_command

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["play", *argv]
    sys.exit(run_package_command("client", argv))
