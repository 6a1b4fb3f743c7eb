"""Model factories importable as ``tests.models:<name>`` by `python` model specs."""

import os
import signal
import time
from pathlib import Path

import torch


def binary_head() -> torch.nn.Module:
    """A single-logit binary head over 8 features (alray treats it as two classes)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 1))


class _FaultyLinear(torch.nn.Module):
    """A seeded linear head over 8 features whose forward obeys control files in a folder:

    - ``kill-*``: each forward tries to take one such token (``os.remove`` succeeds for exactly
      one process); the taker SIGKILLs its own process, mid-shard.
    - ``pass-*``: while the folder holds ``gate``, a forward must take a pass token or block
      (writing ``blocked-<pid>`` with its Ray node id) until ``gate-open`` appears.
    - ``litter-*``: the taker writes a complete temporary file (``.tmp-<pid>-litter.parquet``)
      into the folder the token names, as an atomic write interrupted before its rename leaves,
      then SIGKILLs its own process.
    - ``broken-load`` (read by :func:`faulty_head`): loading the model fails; ``die-load``: the
      process loading it is SIGKILLed.
    With none of these files it is a plain linear head, so an undisturbed run uses the same model.
    """

    def __init__(self, control: str | None):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 4)
        self.control = Path(control) if control else None

    def _take(self, prefix: str) -> bool:
        for token in sorted(self.control.glob(f"{prefix}-*")):
            try:
                token.unlink()
                return True
            except FileNotFoundError:
                continue
        return False

    def _wait_at_gate(self) -> None:
        if not (self.control / "gate").exists() or self._take("pass"):
            return
        import ray

        node = ray.get_runtime_context().get_node_id()
        (self.control / f"blocked-{os.getpid()}").write_text(node)
        while not (self.control / "gate-open").exists():
            time.sleep(0.05)  # waiting for the test to open the gate, not for time to pass

    def _litter(self) -> bool:
        for token in sorted(self.control.glob("litter-*")):
            try:
                folder = Path(token.read_text())
                token.unlink()
            except FileNotFoundError:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f".tmp-{os.getpid()}-litter.parquet").write_bytes(b"PAR1 half a commit")
            return True
        return False

    def forward(self, x):
        if self.control is not None:
            if self._take("kill") or self._litter():
                os.kill(os.getpid(), signal.SIGKILL)
            self._wait_at_gate()
        return self.linear(x)


def faulty_head() -> torch.nn.Module:
    """:class:`_FaultyLinear` controlled by the folder in ``$ALRAY_TEST_FAULTS`` (if set)."""
    control = os.environ.get("ALRAY_TEST_FAULTS")
    if control and (Path(control) / "die-load").exists():
        os.kill(os.getpid(), signal.SIGKILL)
    if control and (Path(control) / "broken-load").exists():
        raise RuntimeError("this model's weights are broken on purpose")
    return _FaultyLinear(control)


class _SmallCnn(torch.nn.Module):
    """conv -> relu -> global average pool -> linear; returns (logits, the pooled embedding)."""

    def __init__(self, channels: int, classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 8, kernel_size=3, padding=1)
        self.head = torch.nn.Linear(8, classes)

    def forward(self, x):
        pooled = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(pooled), pooled


def cnn_gray() -> torch.nn.Module:
    return _SmallCnn(channels=1)


def cnn_rgb() -> torch.nn.Module:
    return _SmallCnn(channels=3)


class _LinearWithEmbedding(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.linear(x), x[:, :3] * 2.0  # the "embedding" is checkable from the input


def linear_with_embedding() -> torch.nn.Module:
    return _LinearWithEmbedding()


class _DropoutMlp(torch.nn.Module):
    """8 features -> 32 -> ReLU -> Dropout(p) -> BatchNorm-free head of 4 classes; returns
    (logits, the hidden layer) so candidates carry an embedding."""

    def __init__(self, p: float, dropout: bool = True):
        super().__init__()
        torch.manual_seed(0)
        self.hidden = torch.nn.Linear(8, 32)
        self.dropout = torch.nn.Dropout(p) if dropout else torch.nn.Identity()
        self.norm = torch.nn.BatchNorm1d(32)  # must stay in eval under MC dropout
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x):
        hidden = self.norm(torch.relu(self.hidden(x)))
        return self.head(self.dropout(hidden)), hidden


def mlp_dropout() -> torch.nn.Module:
    return _DropoutMlp(0.5)


def mlp_dropout_p0() -> torch.nn.Module:
    return _DropoutMlp(0.0)


def mlp_without_dropout() -> torch.nn.Module:
    return _DropoutMlp(0.5, dropout=False)


def first_class_probability(probs: torch.Tensor) -> torch.Tensor:
    """A user's own score over ``[B, C, K]`` probabilities: the mean probability of class 0."""
    return probs[:, 0, :].mean(dim=-1)


class _OutOfMemory(torch.nn.Module):
    def forward(self, x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def out_of_memory() -> torch.nn.Module:
    """A model whose every forward runs out of GPU memory, as torch reports it."""
    return _OutOfMemory()


def _regressor(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def regressor_a() -> torch.nn.Module:
    """A regression model over 8 features with one output; with regressor_b, a committee."""
    return _regressor(1)


def regressor_b() -> torch.nn.Module:
    return _regressor(2)
