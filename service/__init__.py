"""The packer service: Arrow Flight streaming to trainer ranks and a FastAPI control plane.

`service.serve.start_service` runs both in one process around a `service.job.ServiceJob`
(the Ray-facing part); `navit serve DATASET` is its command line.
"""
