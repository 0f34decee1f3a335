"""Errors the host raises for bad input: each says what is wrong and where."""


class KamengsiteError(Exception):
    """Base class for errors meant to be shown to an operator as they are."""


class ConfigError(KamengsiteError):
    """A configuration file is invalid. Names the file, the key and the reason."""

    def __init__(self, path, key, reason):
        self.path = str(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else self.path
        super().__init__(f"{where}: {reason}")


class InstanceError(KamengsiteError):
    """The instance folder is missing or unusable."""
