"""``python -m sb_accel ...``: the same as the ``sb-accel`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
