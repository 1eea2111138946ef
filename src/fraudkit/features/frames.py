"""pandas helpers: canonical frames to records, and the online implementation over a frame."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fraudkit.features.online import OnlineFeatures
from fraudkit.features.spec import FeatureSpec
from fraudkit.schema import Label, Transaction

if TYPE_CHECKING:
    import pandas as pd


# ---------------------------------------------------------------------------------------------
# pandas helpers: run the online implementation over a canonical frame


def _nullable_strings(frame: pd.DataFrame, column: str) -> list[str | None]:
    if column not in frame.columns:
        return [None] * len(frame)
    series = frame[column]
    missing = series.isna().to_numpy()
    return [None if gone else str(value) for value, gone in zip(series.tolist(), missing, strict=True)]


def _nullable_floats(frame: pd.DataFrame, column: str) -> list[float | None]:
    if column not in frame.columns:
        return [None] * len(frame)
    numbers = frame[column].to_numpy(dtype=np.float64, na_value=np.nan).tolist()
    return [None if value != value else value for value in numbers]


def frame_to_transactions(frame: pd.DataFrame, passthrough: Sequence[str] = ()) -> list[Transaction]:
    """Transactions of a canonical frame, in its row order (pass-through columns go to `extra`)."""
    ids = [str(value) for value in frame["transaction_id"].tolist()]
    times = frame["event_time_ms"].to_numpy(dtype=np.int64).tolist()
    amounts = frame["amount"].to_numpy(dtype=np.float64).tolist()
    cards = _nullable_strings(frame, "card_id")
    customers = _nullable_strings(frame, "customer_id")
    terminals = _nullable_strings(frame, "terminal_id")
    currencies = _nullable_strings(frame, "currency")
    categories = _nullable_strings(frame, "merchant_category")
    countries = _nullable_strings(frame, "country")
    lats = _nullable_floats(frame, "lat")
    lons = _nullable_floats(frame, "lon")
    extra_columns = [
        (name, frame[name].to_numpy(dtype=np.float64, na_value=np.nan).tolist()) for name in passthrough
    ]
    transactions = []
    for row in range(len(ids)):
        extra = {}
        for name, column in extra_columns:
            value = column[row]
            if value == value:
                extra[name] = value
        transactions.append(
            Transaction(
                transaction_id=ids[row],
                event_time_ms=times[row],
                card_id=cards[row],  # type: ignore[arg-type]  # datasets without cards have none
                amount=amounts[row],
                customer_id=customers[row],
                terminal_id=terminals[row],
                currency=currencies[row],
                merchant_category=categories[row],
                country=countries[row],
                lat=lats[row],
                lon=lons[row],
                extra=extra,
            )
        )
    return transactions


def frame_to_labels(frame: pd.DataFrame) -> list[Label]:
    """Labels of a canonical frame's labelled rows (rows with a null label are skipped)."""
    labels = frame["label"]
    known = ~labels.isna().to_numpy()
    ids = frame["transaction_id"].to_numpy()[known].tolist()
    times = frame["event_time_ms"].to_numpy(dtype=np.int64)[known].tolist()
    values = labels.to_numpy()[known].astype(np.int64).tolist()
    cards = [card for card, keep in zip(_nullable_strings(frame, "card_id"), known, strict=True) if keep]
    terminal_ids = _nullable_strings(frame, "terminal_id")
    terminals = [terminal for terminal, keep in zip(terminal_ids, known, strict=True) if keep]
    return [
        Label(
            transaction_id=str(ids[i]),
            event_time_ms=times[i],
            label=values[i],
            card_id=cards[i],
            terminal_id=terminals[i],
        )
        for i in range(len(ids))
    ]


def pandas_features(frame: pd.DataFrame, spec: FeatureSpec, dtype: Any = np.float64) -> np.ndarray:
    """Features of every row of a canonical frame, aligned with its rows (same values as spark_features).

    Rows are processed in (event_time_ms, transaction_id) order whatever the frame's order; every
    label of the frame is known up front, which is equivalent to releasing each one at
    event time + label_delay because terminal windows only read labels older than the delay.
    """
    if len(frame) == 0:
        return np.empty((0, len(spec.names)), dtype=dtype)
    order = (
        frame[["event_time_ms", "transaction_id"]]
        .assign(transaction_id=frame["transaction_id"].astype(str), _row=np.arange(len(frame)))
        .sort_values(["event_time_ms", "transaction_id"], kind="mergesort")["_row"]
        .to_numpy()
    )
    ordered = frame.iloc[order]
    online = OnlineFeatures(spec)
    if spec.use_terminal and "label" in frame.columns:
        online.observe_labels(frame_to_labels(ordered))
    features = online.transform(frame_to_transactions(ordered, spec.passthrough), dtype=dtype)
    aligned = np.empty_like(features)
    aligned[order] = features
    return aligned
