"""``python -m raydbb.jobs.invert --config FILE [overrides]``: the invert step as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main("invert"))
