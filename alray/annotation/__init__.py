"""Labels out and back in: a job's selection to annotation tools (Label Studio, SageMaker Ground
Truth, plain files), and their answers back into the ledger.

::

    batch.py         a finished job's selection as annotators will see it
    formats.py       tasks, manifests and records (pure functions of a batch)
    label_studio.py  labeling configs, and Label Studio's API
    export.py        ``alray export``
    answers.py       the tools' answers, and how several answers for one id resolve
    labels.py        ``alray import-labels``
"""

from alray.annotation.export import ExportResult, export
from alray.annotation.labels import ImportResult, import_labels

__all__ = ["ExportResult", "ImportResult", "export", "import_labels"]
