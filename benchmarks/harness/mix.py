"""The desk mix: what a bench full of desk users sends, as one parameterised scenario.

Every client is a desk user: in ``user:<u>``, ``website`` and ``all`` from the connect, two
doctype rooms (two list views: ``doctype_subscribe``) and one document (an open form:
``doc_subscribe`` and ``doc_open``). Per second and per 1 000 users the publisher sends
``list_update`` to doctype rooms, ``doc_update`` to document rooms, ``msgprint`` (a per-user
event) and ``progress`` to user rooms, while a share of the users reconnect (a page reload).

Room sizes are kept constant as the population grows (``doctype_members`` clients per list
view room, ``doc_viewers`` per document), so the deliveries per second grow with N rather
than with N², as they would on a bench whose number of documents grows with its users.
Which rooms a client is in is decided by the load generator from the layout given here
(``benchmarks/loadgen/worker.js``, ``doctypesOf``/``docOf``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .publisher import Target

DOCTYPE_PREFIX = "DT"
DOC_DOCTYPE = "Task"
DOC_PREFIX = "T"
# kind code of the schedule -> Frappe event name; the load generator has the same table.
KINDS = {"l": "list_update", "d": "doc_update", "u": "msgprint", "g": "progress"}


@dataclass(frozen=True)
class Mix:
    """Rates per second per 1 000 users, the reconnect share, and the room sizes."""

    list_update: float = 200.0
    doc_update: float = 50.0
    user: float = 100.0
    progress: float = 20.0
    reconnect_pct: float = 1.0
    doctype_members: int = 20
    doc_viewers: int = 5

    @classmethod
    def parse(cls, text: str) -> Mix:
        """``list_update=200,doc_update=50,user=100,progress=20,reconnect_pct=1,...``"""
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in known:
                raise ValueError(f"bad mix item {item!r} (keys: {', '.join(known)})")
            values[key] = int(value) if known[key] == "int" else float(value)
        return cls(**values)

    def text(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in asdict(self).items())

    def rates(self, n: int) -> dict[str, float]:
        """Events per second of each kind for N users."""
        scale = n / 1000
        return {
            "l": self.list_update * scale,
            "d": self.doc_update * scale,
            "u": self.user * scale,
            "g": self.progress * scale,
        }

    def layout(self, n: int) -> dict[str, int | str]:
        """How many doctype and document rooms N users spread over (sent to the loadgen)."""
        return {
            "doctypes": max(2, round(2 * n / max(1, self.doctype_members))),
            "docs": max(1, round(n / max(1, self.doc_viewers))),
            "doctype_prefix": DOCTYPE_PREFIX,
            "doc_doctype": DOC_DOCTYPE,
            "doc_prefix": DOC_PREFIX,
        }


@dataclass
class Schedule:
    """The kind and target index of every event of one mix phase, by sequence number."""

    kinds: str
    targets: list[int]

    def target(self, seq: int) -> Target:
        kind, x = self.kinds[seq], self.targets[seq]
        if kind == "l":
            room = f"doctype:{DOCTYPE_PREFIX}{x}"
        elif kind == "d":
            room = f"doc:{DOC_DOCTYPE}/{DOC_PREFIX}{x}"
        else:
            room = f"user:u{x}@example.com"
        return Target(room, KINDS[kind], x)


def schedule(mix: Mix, n: int, seconds: float) -> Schedule:
    """The events of SECONDS of the mix for N users, kinds interleaved evenly (smooth
    weighted round robin) and each kind's targets taken in turn."""
    rates = mix.rates(n)
    total_rate = sum(rates.values())
    count = max(1, round(total_rate * seconds))
    layout = mix.layout(n)
    modulus = {"l": int(layout["doctypes"]), "d": int(layout["docs"]), "u": n, "g": n}
    # progress bars go to other users than the msgprints of the same turn
    offset = {"l": 0, "d": 0, "u": 0, "g": n // 2}
    credit = dict.fromkeys(rates, 0.0)
    used = dict.fromkeys(rates, 0)
    kinds: list[str] = []
    targets: list[int] = []
    for _ in range(count):
        for k, r in rates.items():
            credit[k] += r
        kind = max(credit, key=credit.__getitem__)
        credit[kind] -= total_rate
        kinds.append(kind)
        targets.append((used[kind] + offset[kind]) % modulus[kind])
        used[kind] += 1
    return Schedule("".join(kinds), targets)
