"""`periscope up/down/ps`: the services and every long-running stage under supervisord.

The stages run as `periscope ...` processes; this package never imports them.
"""

from periscope.supervise.config import SupervisePaths, render_config
from periscope.supervise.control import ProgramInfo, Supervisor, count_restarts
from periscope.supervise.programs import IngestPlan, Program, plan_programs

__all__ = [
    "IngestPlan",
    "Program",
    "ProgramInfo",
    "SupervisePaths",
    "Supervisor",
    "count_restarts",
    "plan_programs",
    "render_config",
]
