"""Active-learning simulations on the real engine: does a selection strategy beat random?

``alray simulate SIM.yaml`` (or :func:`simulate`) replays an active-learning loop on a labeled
dataset: each round trains a learner, runs a real job that selects the rows to label next, and
reveals their labels, then reports learning curves per strategy against the ``random`` baseline.

- :mod:`~alray.simulation.spec`: ``SIM.yaml``, validated strictly (no torch, no Ray).
- :mod:`~alray.simulation.jobs`: each round's job spec, a strategy's fragment over the base.
- :mod:`~alray.simulation.learners`: the learners and what they give the job (no torch).
- :mod:`~alray.simulation.training`: training and exporting them (torch).
- :mod:`~alray.simulation.data`: datasets, per-repeat splits, the pool files.
- :mod:`~alray.simulation.loop`: the rounds, on one Ray.
- :mod:`~alray.simulation.outputs`: curves, summary, plot and table.
"""

from __future__ import annotations

__all__ = ["SimSpec", "SimulationResult", "load_spec", "simulate"]


def __getattr__(name: str):
    # The loop imports torch and Ray; the spec does not. Import each only when asked for.
    if name in ("simulate", "SimulationResult"):
        from alray.simulation import loop

        return getattr(loop, name)
    if name in ("SimSpec", "load_spec"):
        from alray.simulation import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'alray.simulation' has no attribute {name!r}")
