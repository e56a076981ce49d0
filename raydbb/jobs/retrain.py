"""``python -m raydbb.jobs.retrain --config FILE [overrides]``: the retrain step as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main("retrain"))
