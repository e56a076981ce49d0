"""One generation stage per module."""
