"""A job as the driver sees it, without Ray: its plan (:mod:`~alray.job.plan`), what earlier runs
committed (:mod:`~alray.job.resume`), its counts and ``job.json`` (:mod:`~alray.job.state`) and
what the user is told while it runs (:mod:`~alray.job.progress`)."""
