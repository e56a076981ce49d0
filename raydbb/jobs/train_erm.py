"""``python -m raydbb.jobs.train_erm --config FILE [overrides]``: the train_erm step as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main("train_erm"))
