"""User-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(Exception):
    """Bad input from the user (a file, a field, a row); the message says which and what."""


class ConfigError(UserError):
    """A configuration file or field is invalid."""
