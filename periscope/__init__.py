"""Periscope core: settings, source contracts, local services, topic admin and the CLI.

Every stage package (`ingest`, `spark_streaming`, `ml`, `warehouse`) imports from here;
this package imports none of them.
"""

from periscope.errors import MissingDependencyError, PeriscopeError, ServiceError
from periscope.settings import Settings, get_settings

__all__ = ["MissingDependencyError", "PeriscopeError", "ServiceError", "Settings", "get_settings"]
