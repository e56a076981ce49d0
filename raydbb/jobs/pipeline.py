"""``python -m raydbb.jobs.pipeline --config FILE [--steps a,b] [overrides]``: the whole run as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main(None))
