"""What a job leaves under ``output.uri``: scores files, the selection, ``job.json``, errors."""

from alray.output.folder import OutputFolder
from alray.output.records import ErrorLog, write_job_json, write_selection

__all__ = ["ErrorLog", "OutputFolder", "write_job_json", "write_selection"]
