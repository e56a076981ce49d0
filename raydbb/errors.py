"""User-facing errors: one line that names the bad value and what was expected."""


class RaydbbError(Exception):
    """An error caused by user input (config, files, dataset). The CLI prints it as one line."""


class ConfigError(RaydbbError):
    """A config field has a bad value."""


class DataError(RaydbbError):
    """A dataset folder is missing files, columns or values."""
