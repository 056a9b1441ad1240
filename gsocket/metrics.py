"""Counters, gauges and histograms, exposed in the Prometheus text format at ``/metrics``.

Operators already scrape the bench with Prometheus; a dependency-free registry keeps the
realtime process small while speaking the format every scraper reads.  All updates happen in
greenlets of one process, so plain dict updates need no locks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(names: tuple[str, ...], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _format_number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Metric:
    """A named family of samples keyed by label values.

    :param name: metric name, ``gsocket_`` prefixed by convention.
    :param help: one line shown by Prometheus.
    :param labels: label names; every update passes values in this order.
    :param max_series: bound on distinct label sets, so a client cannot blow up memory by
        inventing event names; updates beyond it land in the ``other`` series.
    """

    kind = "untyped"

    def __init__(
        self, name: str, help: str, labels: Iterable[str] = (), max_series: int = 500
    ) -> None:
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self.max_series = max_series
        self._values: dict[LabelValues, float] = {}

    def _key(
        self, values: LabelValues, store: dict[LabelValues, object] | None = None
    ) -> LabelValues:
        store = self._values if store is None else store
        if values in store or len(store) < self.max_series:
            return values
        return tuple("other" for _ in self.labels)

    def series(self) -> dict[LabelValues, float]:
        """Return a copy of every series' value, keyed by label values."""
        return dict(self._values)

    def value(self, *values: str) -> float:
        """Return the value of the series of ``values`` (0 when it was never updated)."""
        return self._values.get(values, 0.0)

    def samples(self) -> Iterable[str]:
        """Yield the text lines of every series."""
        for values, value in sorted(self._values.items()):
            yield f"{self.name}{_format_labels(self.labels, values)} {_format_number(value)}"

    def render(self) -> str:
        """Return the metric family in Prometheus text format."""
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(Metric):
    """A value that only goes up (events received, messages bridged)."""

    kind = "counter"

    def inc(self, *values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``values``."""
        key = self._key(values)
        self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(Metric):
    """A value that goes up and down (sockets connected)."""

    kind = "gauge"

    def inc(self, *values: str, amount: float = 1.0) -> None:
        """Add ``amount`` to the series of ``values``."""
        key = self._key(values)
        self._values[key] = self._values.get(key, 0.0) + amount

    def dec(self, *values: str, amount: float = 1.0) -> None:
        """Subtract ``amount``; a series that reaches zero is dropped to bound cardinality."""
        key = self._key(values)
        value = self._values.get(key, 0.0) - amount
        if value:
            self._values[key] = value
        else:
            self._values.pop(key, None)

    def set(self, *values: str, value: float) -> None:
        """Set the series of ``values``."""
        self._values[self._key(values)] = value


class Histogram(Metric):
    """Observations counted into cumulative buckets (durations)."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Iterable[str] = (),
        buckets: Iterable[float] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0),
        max_series: int = 200,
    ) -> None:
        super().__init__(name, help, labels, max_series)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts: dict[LabelValues, list[int]] = {}
        self._sums: dict[LabelValues, float] = {}

    def observe(self, *values: str, value: float) -> None:
        """Record one observation for the series of ``values``."""
        key = self._key(values, self._counts)
        counts = self._counts.setdefault(key, [0] * len(self.buckets))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        self._sums[key] = self._sums.get(key, 0.0) + value

    def samples(self) -> Iterable[str]:
        """Yield bucket, sum and count lines of every series."""
        for values, counts in sorted(self._counts.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                le = f'le="{_format_number(bound)}"'
                yield f"{self.name}_bucket{_format_labels(self.labels, values, le)} {count}"
            labels = _format_labels(self.labels, values)
            yield f"{self.name}_sum{labels} {_format_number(self._sums[values])}"
            yield f"{self.name}_count{labels} {counts[-1]}"


class Metrics:
    """Every metric the server keeps; one instance per server."""

    def __init__(self) -> None:
        self.sockets = Gauge("gsocket_sockets_connected", "Sockets connected", ["site"])
        self.connects = Counter("gsocket_connects_total", "Accepted connections", ["site"])
        self.disconnects = Counter(
            "gsocket_disconnects_total",
            "Sockets that disconnected, by reason (client disconnect, ping timeout, ...)",
            ["reason"],
        )
        self.refusals = Counter(
            "gsocket_connect_refusals_total", "Refused connections by reason", ["reason"]
        )
        self.events = Counter(
            "gsocket_events_received_total", "Client events received", ["event"], max_series=200
        )
        self.handler_seconds = Histogram(
            "gsocket_handler_duration_seconds", "Handler run time", ["event"]
        )
        self.handler_errors = Counter(
            "gsocket_handler_errors_total", "Handlers that raised or timed out", ["event"]
        )
        self.clients_dropped = Counter(
            "gsocket_client_drops_total",
            "What the client guard refused a client: packets over its rate, sessions put out, "
            "connections over the per-address limit",
            ["reason"],
        )
        self.bridged = Counter(
            "gsocket_redis_messages_total", "Redis messages bridged, by outcome", ["outcome"]
        )
        self.bridge_reconnects = Counter(
            "gsocket_bridge_reconnects_total", "Times the Redis bridge had to reconnect"
        )
        self.web_calls = Histogram(
            "gsocket_web_call_duration_seconds",
            "Calls to the bench web process by method and outcome",
            ["method", "outcome"],
        )
        self._sources: list[Callable[[], Iterable[Metric]]] = []

    def collect(self, source: Callable[[], Iterable[Metric]]) -> None:
        """Render the families ``source()`` returns on every scrape, after the server's own.

        For state another component keeps anyway (the database pool's counts): read when
        scraped, so that the hot path pays nothing for it.
        """
        self._sources.append(source)

    def render(self) -> str:
        """Return every metric in Prometheus text format."""
        return "".join(
            m.render()
            for m in (
                self.sockets,
                self.connects,
                self.refusals,
                self.events,
                self.handler_seconds,
                self.handler_errors,
                self.clients_dropped,
                self.bridged,
                self.bridge_reconnects,
                self.web_calls,
                *(family for source in self._sources for family in source()),
            )
        )
