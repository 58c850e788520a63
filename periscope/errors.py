"""Exceptions raised by Periscope's core; the CLI prints them without a traceback."""


class PeriscopeError(Exception):
    """Base class for errors a user can act on (the message says how)."""


class MissingDependencyError(PeriscopeError):
    """A program or file that `make setup` provides is not there."""


class ServiceError(PeriscopeError):
    """A local service failed to start, stop or answer."""
