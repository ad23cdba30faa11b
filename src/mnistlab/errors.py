"""The errors a user can fix. The CLI prints each as one line and exits non-zero."""


class MnistlabError(Exception):
    """Base of every error mnistlab raises on purpose."""


class DataError(MnistlabError):
    """A data file is missing, unreadable, malformed, or fails its checksum."""


class ConfigError(MnistlabError, ValueError):
    """A preset, a config file, a command-line override or a keyword argument is wrong."""


class Diverged(MnistlabError):
    """A run's loss stopped being a finite number: nothing was written for it (the others were)."""
