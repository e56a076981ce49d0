"""``python -m raydbb.jobs.generate --config FILE [overrides]``: the generate step as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main("generate"))
