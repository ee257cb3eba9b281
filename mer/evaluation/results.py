"""What an evaluation produced, as data: one model's per-clip predictions (:class:`EvalResult`) and a whole
Table I + III run (:class:`TablesReport`), with their JSON form (``to_dict``/``from_dict``).

The scores are :mod:`mer.train.scores`' (per clip; arousal and valence derived from the quadrant); the files
(Markdown, PNG) are :mod:`mer.evaluation.report`'s.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mer.config import BRANCHES, QUADRANTS
from mer.errors import ConfigError
from mer.evaluation.paper import METHODS, PAPER_ONLY, caveats
from mer.train import METRICS, attention_by_quadrant, confusion_matrix, quadrant_metrics, summarise

RUN_FIELDS = frozenset({"method", "seed", "version", "branches", "clips", "metrics", "confusion",
                        "attention_by_quadrant", "predictions"})
"""The keys :meth:`EvalResult.to_dict` writes itself; any other key of a written run is :attr:`EvalResult.extra`."""


@dataclass
class EvalResult:
    """Per-clip predictions of one model (or baseline) on one list of clips, and what follows from them.

    ``probs`` (N, 4) quadrant probabilities (mean over a clip's windows); ``attention`` (N, 3) mean attention
    received per branch (:func:`mer.labels.attention_received`, averaged over the clip's windows), or None for a
    model without self-attention or a baseline.
    """

    method: str
    names: list[str]
    true: np.ndarray
    probs: np.ndarray
    attention: np.ndarray | None = None
    branches: tuple[str, ...] = BRANCHES
    seed: int | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pred(self) -> np.ndarray:
        """Predicted quadrant per clip (N,), argmax of ``probs``."""
        return np.asarray(self.probs).argmax(axis=1)

    @property
    def metrics(self) -> dict[str, float]:
        return quadrant_metrics(self.true, self.pred)

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.true, self.pred)

    @property
    def counts(self) -> np.ndarray:
        """Clips per true quadrant (4,)."""
        return np.bincount(np.asarray(self.true, dtype=np.int64), minlength=4)

    @property
    def attention_by_quadrant(self) -> np.ndarray | None:
        """(4, 3) mean attention received per branch, per TRUE quadrant (NaN for a quadrant with no clips)."""
        if self.attention is None:
            return None
        return attention_by_quadrant(self.true, self.attention)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-clip predictions: the :data:`RUN_FIELDS`, then :attr:`extra`."""
        by_quadrant = self.attention_by_quadrant
        return {
            "method": self.method,
            "seed": self.seed,
            "version": self.version,
            "branches": list(self.branches),
            "clips": len(self.names),
            "metrics": self.metrics,
            "confusion": self.confusion.tolist(),
            "attention_by_quadrant": None if by_quadrant is None else _nan_to_none(by_quadrant.tolist()),
            "predictions": [
                {"name": n, "true": QUADRANTS[int(t)], "pred": QUADRANTS[int(p)],
                 "probs": [round(float(x), 5) for x in pr],
                 **({} if self.attention is None else {"attention": [round(float(x), 5) for x in self.attention[i]]})}
                for i, (n, t, p, pr) in enumerate(zip(self.names, self.true, self.pred, self.probs))
            ],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, run: dict[str, Any]) -> "EvalResult":
        """The inverse of :meth:`to_dict` (a run of a written report), up to the 5-decimal rounding of ``probs``.

        Reports written before per-clip attention was recorded carry only ``attention_by_quadrant``; then each
        clip gets its true quadrant's mean, which leaves :attr:`attention_by_quadrant` (all a report uses) exact.
        """
        predictions = run["predictions"]
        true = np.array([QUADRANTS.index(p["true"]) for p in predictions], dtype=np.int64)
        attention = None
        if predictions and "attention" in predictions[0]:
            attention = np.array([p["attention"] for p in predictions], dtype=np.float64)
        elif run.get("attention_by_quadrant") is not None:  # None (a quadrant without clips) reads as NaN
            attention = np.array(run["attention_by_quadrant"], dtype=np.float64)[true]
        return cls(method=run["method"], names=[p["name"] for p in predictions], true=true,
                   probs=np.array([p["probs"] for p in predictions], dtype=np.float64), attention=attention,
                   branches=tuple(run["branches"]), seed=run["seed"], version=run["version"],
                   extra={k: v for k, v in run.items() if k not in RUN_FIELDS})


def _nan_to_none(values: Any) -> Any:
    if isinstance(values, list):
        return [_nan_to_none(v) for v in values]
    return None if isinstance(values, float) and math.isnan(values) else values


@dataclass
class TablesReport:
    """The outcome of :func:`~mer.evaluation.tables.run_tables`: per method, its per-seed :class:`EvalResult` s;
    the setup; file paths."""

    results: dict[str, list[EvalResult]]
    setup: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self, key: str) -> dict[str, dict[str, float]]:
        """``{metric: {"mean", "std"}}`` of one method over its seeds."""
        return {m: summarise([r.metrics[m] for r in self.results[key]]) for m in METRICS}

    def to_dict(self) -> dict[str, Any]:
        methods = []
        for method in METHODS:
            if method.key not in self.results:
                continue
            runs = self.results[method.key]
            methods.append({
                "key": method.key, "label": method.label, "paper_tables": method.tables,
                "kind": "deep" if method.deep else "linear baseline",
                "branches": list(method.branches), "use_attention": method.use_attention,
                "paper": method.paper, "ours": self.summary(method.key),
                "seeds": [r.seed for r in runs],
                "confusion_total": sum(r.confusion for r in runs).tolist(),
                "runs": [r.to_dict() for r in runs],
            })
        return {
            "title": "Zhao & Yoshii, Tables I and III, on the EMOPIA test split",
            "methods": methods,
            "paper_only": [{"label": label, "paper": numbers} for label, numbers in PAPER_ONLY],
            "setup": self.setup,
            "caveats": caveats(self.setup),
            "files": {k: str(v) for k, v in self.paths.items()},
        }


def read_report(path: Path) -> Any:
    """A written report's parsed JSON; ConfigError naming the file when it cannot be read or is not JSON."""
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the report ({error.strerror or error})") from None
    except ValueError as error:
        raise ConfigError(f"{path}: not a JSON report ({error})") from None
