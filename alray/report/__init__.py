"""``alray report OUT``: one self-contained HTML page on a finished job's output folder.

The page (``OUT/report.html``) shows the pool's scores with the selection's cut, the class mix
and the model's confidence in the pool against the selection, the learning curves of an
``alray simulate`` folder and a data map of training dynamics where their files are present, a
summary of the run and the top of the selection. Its plots are also written as
``OUT/report/*.png``. The pool is read streamed, a few columns at a time, never as one table.

- :mod:`~alray.report.tally`: reading the folder; fixed-bin counts over the scores files.
- :mod:`~alray.report.plots`: the figures (matplotlib's Figure on Agg; no pyplot).
- :mod:`~alray.report.page`: the HTML page.
- :mod:`~alray.report.build`: :func:`report`, which ties them together and writes the files.
"""

from __future__ import annotations

from alray.report.build import ReportResult, report
from alray.report.plots import plot_data_map

__all__ = ["ReportResult", "plot_data_map", "report"]
