"""Scan jobs: stored videos scanned by the worker fleet, one job per record of
``clipguard.jobs``.

- :mod:`~consumers.jobs.runner`: :class:`JobRunner`, the thread in each worker that runs jobs;
- :mod:`~consumers.jobs.client`: :class:`JobClient`, which submits jobs and follows them
  (``clipguard scan --bootstrap-servers``).
"""

from consumers.jobs.client import JobClient, JobError, JobOutcome
from consumers.jobs.runner import InvalidJob, JobRunner, job_options, start_jobs

__all__ = [
    "InvalidJob",
    "JobClient",
    "JobError",
    "JobOutcome",
    "JobRunner",
    "job_options",
    "start_jobs",
]
