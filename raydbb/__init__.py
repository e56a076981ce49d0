"""raydbb: Diffusion Driven Balancing (DDB) as a scalable Ray data-generation engine."""

__version__ = "0.1.0"
