"""The torch MLP, `LoadedModel` (scoring and reason codes) and the amount `RuleModel`."""

from __future__ import annotations

import contextlib
import itertools
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.errors import ModelError

if TYPE_CHECKING:
    import torch

# Standard deviations below this are treated as constant features (scaled by 1, not blown up).
MIN_STD = 1e-6
# Far above anything this tabular MLP needs (a few thousand weights), far below what would
# exhaust memory: a manifest naming `[3000000000]` must fail with a message, not allocate 300 GB.
MAX_LAYER_WIDTH = 65_536
MAX_HIDDEN_LAYERS = 64
MAX_FEATURES = 10_000
MAX_PARAMETERS = 50_000_000


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def threshold_problem(value: Any) -> str | None:
    """Why `value` is not a decision threshold (a real number from 0 to 1), or None if it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) <= 1:
        return f"the threshold must be a number from 0 to 1, got {value!r}"
    return None


def parameter_count(input_dim: int, hidden_sizes: Sequence[int]) -> int:
    """Weights and biases of the MLP: input -> hidden... -> one logit."""
    widths = [input_dim, *hidden_sizes, 1]
    return sum((a + 1) * b for a, b in itertools.pairwise(widths))


def architecture_problem(input_dim: Any, hidden_sizes: Any) -> str | None:
    """Why (input_dim, hidden_sizes) is not a network fraudkit will build, or None if it is."""
    if not _whole(input_dim) or not 1 <= input_dim <= MAX_FEATURES:
        return f"the input width must be a whole number from 1 to {MAX_FEATURES:,}, got {input_dim!r}"
    if not isinstance(hidden_sizes, list | tuple) or len(hidden_sizes) > MAX_HIDDEN_LAYERS:
        return (
            f"hidden_sizes must be a list of at most {MAX_HIDDEN_LAYERS} layer widths, got {hidden_sizes!r}"
        )
    for size in hidden_sizes:
        if not _whole(size) or not 1 <= size <= MAX_LAYER_WIDTH:
            return (
                f"hidden_sizes: each width must be a whole number from 1 to {MAX_LAYER_WIDTH:,}, got {size!r}"
            )
    count = parameter_count(int(input_dim), [int(size) for size in hidden_sizes])
    if count > MAX_PARAMETERS:
        return f"hidden_sizes {list(hidden_sizes)} give {count:,} parameters, more than the {MAX_PARAMETERS:,} allowed"
    return None


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch with `count` intra-op threads, then restore the previous setting.

    This MLP is small: extra threads only add synchronisation, and on a busy 2-core machine
    two threads made scoring 2000 rows ~80x slower than one (40 ms vs 0.5 ms).
    """
    import torch

    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous != count:
            torch.set_num_threads(previous)


@dataclass(frozen=True)
class Normalisation:
    """Per-feature mean and standard deviation of the training rows (float64)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> Normalisation:
        """Statistics of X's columns, ignoring NaN; constant or empty columns get std 1."""
        X = np.asarray(X, dtype=np.float64)
        with np.errstate(all="ignore"):
            mean = np.nanmean(X, axis=0) if X.shape[0] else np.zeros(X.shape[1])
            std = np.nanstd(X, axis=0) if X.shape[0] else np.ones(X.shape[1])
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > MIN_STD), std, 1.0)
        return cls(mean=mean, std=std)

    def apply(self, X: np.ndarray) -> np.ndarray:
        """(X - mean) / std as float32, missing values (NaN) at the mean (0)."""
        Z = (np.asarray(X, dtype=np.float32) - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        return np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0, copy=False)

    def to_dict(self) -> dict[str, list[float]]:
        """Plain lists for the manifest."""
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalisation:
        """Inverse of to_dict."""
        mean = np.asarray(data["mean"], dtype=np.float64)
        std = np.asarray(data["std"], dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError("normalisation mean and std must be lists of equal length")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("normalisation statistics must be finite with std > 0")
        return cls(mean=mean, std=std)


def build_mlp(input_dim: int, hidden_sizes: Sequence[int], dropout: float = 0.0) -> torch.nn.Module:
    """A ReLU MLP ending in ONE logit; no hidden layers gives logistic regression.

    Weight names (hidden.N.*, output.*) do not depend on dropout, so a state dict trained with
    dropout loads into the dropout-free scoring network.
    """
    import torch

    class FraudMLP(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [input_dim, *[int(size) for size in hidden_sizes]]
            self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in itertools.pairwise(widths))
            self.dropout = torch.nn.Dropout(dropout)
            self.output = torch.nn.Linear(widths[-1], 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.hidden:
                x = self.dropout(torch.relu(layer(x)))
            return self.output(x)

    return FraudMLP()


def state_to_numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A state dict as contiguous float32 numpy arrays (what safetensors stores)."""
    arrays = {}
    for name, value in state.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        arrays[name] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
    return arrays


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    # Split by sign so exp never overflows.
    out = np.empty_like(logits)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    exp = np.exp(logits[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out


class LoadedModel:
    """A trained MLP ready to score feature rows: fraud probability = sigmoid of one logit."""

    def __init__(
        self,
        version: str,
        network: torch.nn.Module,
        feature_names: Sequence[str],
        normalisation: Normalisation,
        threshold: float,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        if len(normalisation.mean) != len(feature_names):
            raise ModelError(
                f"model {version}: {len(feature_names)} features but normalisation for "
                f"{len(normalisation.mean)}"
            )
        self.version = version
        self.threshold = float(threshold)
        self.feature_names = list(feature_names)
        self.normalisation = normalisation
        self.manifest: dict[str, Any] = dict(manifest or {})
        # Torch intra-op threads while scoring; 1 suits batches of a few thousand rows.
        self.threads = 1
        self._network = network.eval()
        for parameter in self._network.parameters():
            parameter.requires_grad_(False)
        # The layers as (bias, weight.t()) for torch.addmm, the product nn.Linear computes (the
        # same scores, bit for bit): calling the nn.Module costs ~40 us per batch in hooks and
        # dispatch, most of the scoring time of the small batches a moderate rate gives (measured).
        self._layers = [(layer.bias, layer.weight.t()) for layer in _linear_layers(self._network)]

    @classmethod
    def from_state(
        cls,
        model_state: Mapping[str, Any],
        feature_names: Sequence[str],
        normalisation: Normalisation,
        threshold: float,
        hidden_sizes: Sequence[int],
        version: str = "candidate",
        manifest: Mapping[str, Any] | None = None,
    ) -> LoadedModel:
        """Build from a state dict (numpy arrays or tensors); ModelError if shapes do not fit."""
        import torch

        problem = architecture_problem(len(feature_names), list(hidden_sizes))
        if problem is not None:
            raise ModelError(f"model {version}: {problem}")
        problem = threshold_problem(threshold)
        if problem is not None:
            raise ModelError(f"model {version}: {problem}")
        network = build_mlp(len(feature_names), hidden_sizes, dropout=0.0)
        tensors = {name: torch.from_numpy(value) for name, value in state_to_numpy(model_state).items()}
        try:
            network.load_state_dict(tensors, strict=True)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise ModelError(f"model {version}: weights do not match the architecture: {exc}") from None
        return cls(version, network, feature_names, normalisation, threshold, manifest)

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ModelError(
                f"model {self.version} expects {len(self.feature_names)} features per row, got shape {X.shape}"
            )
        return self.normalisation.apply(X)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Raw logits (float32) for rows of features."""
        import torch

        Z = self._inputs(X)
        if Z.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        addmm = torch.addmm
        *hidden, (bias, weight) = self._layers
        with torch_threads(self.threads), torch.inference_mode():
            x = torch.from_numpy(Z)
            for hidden_bias, hidden_weight in hidden:
                x = torch.relu_(addmm(hidden_bias, x, hidden_weight))
            return addmm(bias, x, weight).numpy()[:, 0].copy()

    def score(self, X: np.ndarray) -> np.ndarray:
        """Fraud probabilities (float64) for rows of features, shape (n,)."""
        return _sigmoid(self.logits(X))

    def explain(self, X_rows: np.ndarray, k: int = 3) -> list[list[dict[str, Any]]]:
        """Top-k reason codes per row: gradient x normalised input, most fraud-pushing first."""
        import torch

        Z = self._inputs(X_rows)
        if Z.shape[0] == 0 or k <= 0:
            return [[] for _ in range(Z.shape[0])]
        # The gradient of the logit by hand (what autograd computes, at a sixth of its cost): a
        # ReLU passes the gradient where its input was positive.
        addmm = torch.addmm
        *hidden, (_, output_weight) = self._layers
        with torch_threads(self.threads), torch.inference_mode():
            x = torch.from_numpy(Z)
            active = []
            for hidden_bias, hidden_weight in hidden:
                x = addmm(hidden_bias, x, hidden_weight)
                active.append(x > 0)
                x = torch.relu(x)
            gradient = output_weight.t().expand(x.shape[0], -1)
            for (_, hidden_weight), positive in zip(reversed(hidden), reversed(active), strict=True):
                gradient = (gradient * positive) @ hidden_weight.t()
            contributions = (gradient * torch.from_numpy(Z)).numpy()
        raw = np.asarray(X_rows, dtype=np.float64)
        return [_top_reasons(self.feature_names, raw[i], contributions[i], k) for i in range(Z.shape[0])]

    def state_dict(self) -> dict[str, np.ndarray]:
        """The network's weights as numpy arrays."""
        return state_to_numpy(self._network.state_dict())


def _linear_layers(network: torch.nn.Module) -> list[torch.nn.Linear]:
    """The Linear layers of a `build_mlp` network, input to output (ModelError for another shape)."""
    hidden = getattr(network, "hidden", None)
    output = getattr(network, "output", None)
    if hidden is None or output is None:
        raise ModelError("the scoring network is not an MLP from build_mlp")
    return [*hidden, output]


def _top_reasons(
    names: Sequence[str], values: np.ndarray, contributions: np.ndarray, k: int
) -> list[dict[str, Any]]:
    order = np.argsort(-contributions, kind="mergesort")[:k]
    return [
        {
            "feature": names[i],
            "value": None if not np.isfinite(values[i]) else round(float(values[i]), 6),
            "contribution": round(float(contributions[i]), 6),
        }
        for i in order
    ]


class RuleModel:
    """The classic rule: fraud (score 1.0) when the `amount` feature exceeds a fixed threshold."""

    version = "rules"

    def __init__(self, amount_threshold: float, feature_names: Sequence[str]) -> None:
        self.feature_names = list(feature_names)
        if "amount" not in self.feature_names:
            raise ModelError("the amount rule needs an 'amount' feature column, which this feature set lacks")
        self.amount_threshold = float(amount_threshold)
        self.threshold = 0.5
        self._amount_column = self.feature_names.index("amount")
        self.manifest: dict[str, Any] = {"version": "rules", "amount_threshold": self.amount_threshold}

    def score(self, X: np.ndarray) -> np.ndarray:
        """1.0 where amount > threshold, else 0.0 (float64)."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ModelError(f"rules expect {len(self.feature_names)} features per row, got shape {X.shape}")
        return (X[:, self._amount_column] > self.amount_threshold).astype(np.float64)

    def explain(self, X_rows: np.ndarray, k: int = 3) -> list[list[dict[str, Any]]]:
        """The amount as the single reason for flagged rows; nothing for the others."""
        X_rows = np.asarray(X_rows, dtype=np.float64)
        reasons: list[list[dict[str, Any]]] = []
        for row in X_rows:
            amount = float(row[self._amount_column])
            if k > 0 and amount > self.amount_threshold:
                reasons.append([{"feature": "amount", "value": amount, "contribution": 1.0}])
            else:
                reasons.append([])
        return reasons
