"""``python -m raydbb.jobs.evaluate --config FILE [overrides]``: the evaluate step as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
