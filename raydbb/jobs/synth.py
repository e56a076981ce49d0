"""``python -m raydbb.jobs.synth --config FILE [overrides]``: the synth step as a Ray job."""

import sys

from raydbb.jobs import main

if __name__ == "__main__":
    sys.exit(main("synth"))
