"""The packing job behind the service: config control, rank streams, status.

- `config_control`: config versions, where a change applies, what-if runs;
- `planning`: the shared planner of each epoch and the planned frontier;
- `streams`: each rank's stream of batches, bounded fills, rank cursors;
- `status`: what /stats and the dashboard show, trainer reports;
- `job`: `ServiceJob`, which wires them together.
"""

from service.batch_source import OutgoingBatch, ServiceStopping
from service.job.errors import ConfigConflict, VersionMismatch
from service.job.job import ServiceJob

__all__ = [
    "ConfigConflict",
    "OutgoingBatch",
    "ServiceJob",
    "ServiceStopping",
    "VersionMismatch",
]
