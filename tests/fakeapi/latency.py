"""The fake API server's latency model: how long a real kube-apiserver + etcd takes per request kind and size.

Owns ``LatencyModel``: a linear cost per request kind (``base_ms + per_kib_ms * KiB``), an optional seeded
jitter, and the text form the command line and ``$SPIDER_FAKEAPI_LATENCY`` use.  It only says how long; the
server (``tests.fakeapi.server``) decides how the time is served: concurrently for concurrent requests, and for
writes *before* the storage's resourceVersion check and commit, so two PUTs racing at one resourceVersion both
pay the latency and the later one gets 409 Conflict, as etcd's compare-and-swap at the end of a write makes it;
a PUT whose resourceVersion is already stale when it arrives costs a ``get`` of its size and is refused, as
kube-apiserver compares it with the object it holds before it tries any etcd transaction.

Request kinds (``VERBS``): ``get``, ``list``, ``create``, ``update`` (PUT), ``updateStatus`` (PUT to
``/status``), ``patch``, ``delete``, and ``watch-event`` (from commit to delivery, per batch of events sent).
Size: the request body for writes, the answer for reads, the events' JSON for a watch.

Where the default numbers (``MEASURED``) come from.  A real kube-apiserver v1.24 with etcd 3.4 on a 2-core
machine of the kind our benchmarks run on: a SpiderIPPool status PUT took a median of 16 ms with 1,000
allocation records (~220 B each, ~215 KiB of body) and 3 ms with 10 records (~2.1 KiB).  The line through both
points: 2.87 ms + 0.061 ms per KiB, used for ``updateStatus`` and, for want of separate measurements, for
``update``, ``create`` and ``patch`` (each is one etcd transaction with a body of that size; ``delete`` carries
no body, so it costs the base).  Reads skip raft and the disk: ``get`` and ``list`` are estimates, 1 ms +
0.02 ms per KiB of answer (a third of a write's per-byte cost: encode only); a watch event, 0.3 ms +
0.005 ms per KiB (the watch cache fans out an already-encoded event).  Only the two write figures are
measurements; everything else is an estimate, to be replaced when someone measures it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping

import attrs

VERBS = ("get", "list", "create", "update", "updateStatus", "patch", "delete", "watch-event")
ENV = "SPIDER_FAKEAPI_LATENCY"
"""How the bench (or anyone starting ``python -m tests.fakeapi``) sets the model: see ``LatencyModel.parse``."""


@attrs.frozen
class Cost:
    """One request kind's latency: a fixed part and a part per KiB of the request (or answer)."""

    base_ms: float
    per_kib_ms: float = 0.0

    def ms(self, size: int) -> float:
        return self.base_ms + self.per_kib_ms * size / 1024


_WRITE = Cost(2.87, 0.061)
_READ = Cost(1.0, 0.02)
MEASURED: Mapping[str, Cost] = {
    "get": _READ,
    "list": _READ,
    "create": _WRITE,
    "update": _WRITE,
    "updateStatus": _WRITE,
    "patch": _WRITE,
    "delete": Cost(_WRITE.base_ms),
    "watch-event": Cost(0.3, 0.005),
}
"""The defaults: see the module docstring for where each number comes from."""


@attrs.define(eq=False)
class LatencyModel:
    """How long each request takes; a kind not in ``costs`` takes no time.  ``LatencyModel()`` is off.

    ``jitter``: each delay is multiplied by a factor drawn uniformly from ``[1 - jitter, 1 + jitter]``, from a
    generator seeded with ``seed`` (same seed, same sequence of factors).
    """

    costs: Mapping[str, Cost] = attrs.field(factory=dict)
    jitter: float = attrs.field(default=0.0)
    seed: int = 0
    _random: random.Random = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.costs) - set(VERBS))
        if unknown:
            raise ValueError(f"unknown request kinds {unknown}; the kinds are {list(VERBS)}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be from 0 to below 1, not {self.jitter}")
        if any(c.base_ms < 0 or c.per_kib_ms < 0 for c in self.costs.values()):
            raise ValueError("latencies must not be negative")
        self._random = random.Random(self.seed)

    @classmethod
    def measured(cls, *, scale: float = 1.0, jitter: float = 0.2, seed: int = 0) -> LatencyModel:
        """The defaults of a real API server on this kind of machine (``MEASURED``), times ``scale``."""
        costs = {verb: Cost(c.base_ms * scale, c.per_kib_ms * scale) for verb, c in MEASURED.items()}
        return cls(costs, jitter, seed)

    @classmethod
    def parse(cls, text: str, *, jitter: float | None = None, seed: int = 0) -> LatencyModel:
        """A model from its text form: ``off`` (or empty), ``measured``, ``measured*F`` (scaled by F), or a JSON
        object ``{"jitter": 0.2, "seed": 1, "scale": 1.0, "costs": {"updateStatus": [2.87, 0.061], ...}}``
        whose ``costs`` replace the measured ones they name (``"costs": {...}, "only": true`` uses just them).
        ``jitter`` given here overrides the text's."""
        text = text.strip()
        if text in ("", "off", "0", "none"):
            return cls(jitter=jitter or 0.0, seed=seed)
        if text == "measured" or text.startswith("measured*"):
            scale = float(text.removeprefix("measured").removeprefix("*") or 1)
            return cls.measured(scale=scale, jitter=0.2 if jitter is None else jitter, seed=seed)
        try:
            spec = json.loads(text)
        except ValueError:
            raise ValueError(f"a latency model is off, measured, measured*F or a JSON object, not {text!r}") from None
        if not isinstance(spec, dict):
            raise ValueError(f"a latency model in JSON is an object, not {text!r}")
        scale = float(spec.get("scale", 1.0))
        base = {} if spec.get("only") else dict(MEASURED)
        for verb, value in (spec.get("costs") or {}).items():
            base[verb] = Cost(*(float(v) for v in (value if isinstance(value, list) else [value])))
        costs = {verb: Cost(c.base_ms * scale, c.per_kib_ms * scale) for verb, c in base.items()}
        chosen = jitter if jitter is not None else float(spec.get("jitter", 0.2))
        return cls(costs, chosen, int(spec.get("seed", seed)))

    @property
    def enabled(self) -> bool:
        return any(c.base_ms or c.per_kib_ms for c in self.costs.values())

    def seconds(self, verb: str, size: int) -> float:
        """How long one request of kind ``verb`` with ``size`` bytes takes (jitter drawn here)."""
        cost = self.costs.get(verb)
        if cost is None:
            return 0.0
        ms = cost.ms(size)
        if self.jitter:
            ms *= self._random.uniform(1 - self.jitter, 1 + self.jitter)
        return ms / 1000

    def describe(self) -> dict[str, object]:
        """The model's parameters, for a benchmark's record."""
        return {
            "costs_ms": {verb: [round(c.base_ms, 4), round(c.per_kib_ms, 4)] for verb, c in self.costs.items()},
            "cost_form": "base_ms + per_kib_ms * KiB",
            "jitter": self.jitter,
            "seed": self.seed,
        }
