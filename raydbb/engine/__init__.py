"""The generation engine: Ray-free stages and the one adapter that maps them onto Ray Data."""
