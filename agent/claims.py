"""
Claims: many reasons holding one object's fields at once, and the value each field gets from them.

Today each field the agent changes has one owner (a per-field ownership
annotation), so a second reason on an owned field can only be a no-op. The
calendar, spot evacuation and cost need several at once: a schedule window
holds a floor of 3 while an alert asks for 5; a cost cap holds a ceiling while a
notice pre-scales. So a temporary change becomes a :class:`Claim` on a field,
and the value written is computed from all live claims by one rule per field
(:func:`resolve`):

- a floor (``min-replicas``, a pre-scale) takes the highest floor, clamped at
  the effective ceiling (the lowest of the guard's ceiling, the live caps and
  the object's own maximum: KEDA rejects min > max), and says so when clamped;
- a ceiling (``max-replicas``) takes the lowest cap; a raise lifts it only when
  no cap holds it, and never lowers it;
- a pause (``paused-replicas``) holds the count at the highest of the pause
  counts and the live floor: a pre-scale on a paused object still adds
  capacity, and a loaded service is never scaled down because two reasons
  disagreed; a cap below that count is recorded as a conflict, not applied;
- a non-numeric field (a cordon, an agent-owned taint) is held while any claim
  holds it.

The value before the first claim on a field is kept once (``original``), with
the last value the agent wrote (``written``): when the last claim ends the
original goes back, unless the field no longer holds what the agent wrote
(someone else changed it; :meth:`Claims.drifted`). Everything lives in one
versioned annotation on the object (:data:`ANNOTATION`), so any process after
any crash can finish the job from the object alone; an object holds at most
:data:`MAX_CLAIMS` claims, and a new one past that is refused
(:class:`TooManyClaims`). Objects changed before claims existed carry one
ownership annotation per field; :meth:`Claims.from_ownerships` reads them.

This module is pure: no I/O, no clock. The executor and the target kinds
apply what it computes.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from agent.structs import Ownership, _from_iso, _iso
from agent.targets.base import ANNOTATION_PREFIX, MAX_REPLICAS, MIN_REPLICAS, PAUSED_REPLICAS

ANNOTATION = f"{ANNOTATION_PREFIX}claims"
VERSION = 1
MAX_CLAIMS = 32  # per object: a selector or a storm must not grow an annotation without bound

Value = int | bool | None


class Want(enum.StrEnum):
    """What a claim asks of its field."""

    FLOOR = "floor"  # at least N (min-replicas, a pre-scale)
    CAP = "cap"  # at most N (max-replicas)
    RAISE = "raise"  # max-replicas lifted to N, unless a cap holds it
    PAUSE = "pause"  # hold the replica count at N (paused-replicas)
    HOLD = "hold"  # a non-numeric field held (cordon, taint) while any claim holds it


class TooManyClaims(Exception):
    """The object holds :data:`MAX_CLAIMS` claims already; the new one is refused, the others stand."""


@dataclass(frozen=True)
class Claim:
    """One reason holding one field: who, what it wants, until when, and the decision that made it."""

    field: str
    want: Want
    value: int | None  # None for HOLD
    holder: str  # who holds it: "rule:<rule>:<fingerprint>", "schedule:<name>", "notice:<id>", …
    key: str  # the idempotency key of the event that made it: the same event twice is the same claim
    decision: str
    reason: str
    since: datetime
    until: datetime | None = None  # expiry or window end; None: until released
    ends_on_resolve: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "want": str(self.want),
            "value": self.value,
            "holder": self.holder,
            "key": self.key,
            "decision": self.decision,
            "reason": self.reason,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "endsOnResolve": self.ends_on_resolve,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Claim:
        since = _from_iso(data["since"])
        assert since is not None
        return cls(
            field=data["field"],
            want=Want(data["want"]),
            value=data.get("value"),
            holder=data["holder"],
            key=data.get("key", ""),
            decision=data["decision"],
            reason=data.get("reason", ""),
            since=since,
            until=_from_iso(data.get("until")),
            ends_on_resolve=bool(data.get("endsOnResolve", False)),
        )


@dataclass(frozen=True)
class Kept:
    """Per field: the value before the first claim, and the last value the agent wrote."""

    original: Value
    written: Value


@dataclass(frozen=True)
class Resolved:
    """A field's value from its live claims, and what the decision should say about how it was reached."""

    value: Value
    notes: tuple[str, ...] = ()
    conflicts: tuple[Claim, ...] = ()  # claims that could not be honoured (a cap below a pause)


@dataclass(frozen=True)
class Claims:
    """Everything the agent holds on one object: the kept values per field and the live claims."""

    kept: Mapping[str, Kept] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()

    def on(self, name: str) -> tuple[Claim, ...]:
        return tuple(c for c in self.claims if c.field == name)

    def add(self, claim: Claim, *, current: Value) -> Claims:
        """
        Add a claim (one holder has at most one claim per field: a new one replaces its old one). The field's
        current value is kept as its original when this is its first claim. Raises :class:`TooManyClaims`.
        """
        others = tuple(c for c in self.claims if not (c.field == claim.field and c.holder == claim.holder))
        if len(others) >= MAX_CLAIMS:
            raise TooManyClaims(f"the object holds {len(others)} claims already (at most {MAX_CLAIMS})")
        kept = dict(self.kept)
        kept.setdefault(claim.field, Kept(original=current, written=current))
        return Claims(kept=kept, claims=(*others, claim))

    def release(self, ends: Callable[[Claim], bool]) -> tuple[Claims, tuple[Claim, ...]]:
        """Drop the claims ``ends`` picks; returns what is left and what was dropped."""
        dropped = tuple(c for c in self.claims if ends(c))
        return Claims(kept=self.kept, claims=tuple(c for c in self.claims if not ends(c))), dropped

    def wrote(self, values: Mapping[str, Value]) -> Claims:
        """The agent wrote these values; a field with no claim left is forgotten (its original is back)."""
        kept = dict(self.kept)
        for name, value in values.items():
            if name in kept:
                kept[name] = replace(kept[name], written=value)
        for name in list(kept):
            if not self.on(name):
                del kept[name]
        return Claims(kept=kept, claims=self.claims)

    def drifted(self, name: str, current: Value) -> bool:
        """Someone else changed the field: it no longer holds the value the agent last wrote."""
        return name in self.kept and current != self.kept[name].written

    def let_go(self, name: str) -> Claims:
        """Drop the field altogether (after someone else changed it): its claims, and its kept values."""
        kept = {n: k for n, k in self.kept.items() if n != name}
        return Claims(kept=kept, claims=tuple(c for c in self.claims if c.field != name))

    # --- on the object ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "kept": {n: {"original": k.original, "written": k.written} for n, k in sorted(self.kept.items())},
                "claims": [c.to_dict() for c in self.claims],
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Claims:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"claims annotation version {data.get('version')!r}; this agent reads {VERSION}")
        kept = {n: Kept(original=k.get("original"), written=k.get("written")) for n, k in data["kept"].items()}
        return cls(kept=kept, claims=tuple(Claim.from_dict(c) for c in data["claims"]))

    @classmethod
    def from_ownerships(cls, owned: Iterable[Ownership]) -> Claims:
        """The claims equivalent to the per-field ownership annotations written before claims existed."""
        kept: dict[str, Kept] = {}
        claims: list[Claim] = []
        for ownership in owned:
            kept[ownership.field] = Kept(original=ownership.before, written=ownership.after)
            claims.append(
                Claim(
                    field=ownership.field,
                    want=_want_of(ownership),
                    value=ownership.after,
                    holder=f"rule:{ownership.rule}:{ownership.fingerprint}",
                    key=ownership.event_key,
                    decision=ownership.decision,
                    reason=ownership.reason,
                    since=ownership.applied_at,
                    until=ownership.expires_at,
                    ends_on_resolve=ownership.revert_on_resolve,
                )
            )
        return cls(kept=kept, claims=tuple(claims))


def _want_of(ownership: Ownership) -> Want:
    if ownership.field == PAUSED_REPLICAS:
        return Want.PAUSE
    if ownership.field == MIN_REPLICAS:
        return Want.FLOOR
    lowered = ownership.before is not None and ownership.after is not None and ownership.after < ownership.before
    return Want.CAP if ownership.action == "set_max" and lowered else Want.RAISE


def resolve(claims: Claims, *, ceiling: int, current: Mapping[str, Value]) -> dict[str, Resolved]:
    """
    The value of every field that has kept values (claimed now, or claimed until just now), by the rules in the
    module's docstring. ``ceiling`` is the guard's; ``current`` the object's values now (its own maximum among
    them). A field whose claims all ended resolves to its original.
    """
    result: dict[str, Resolved] = {}
    original = {name: k.original for name, k in claims.kept.items()}

    caps = [c for c in claims.on(MAX_REPLICAS) if c.want == Want.CAP and c.value is not None]
    raises = [c for c in claims.on(MAX_REPLICAS) if c.want == Want.RAISE and c.value is not None]
    own_max = original.get(MAX_REPLICAS, current.get(MAX_REPLICAS))
    max_value: Value = own_max
    if MAX_REPLICAS in claims.kept:
        if caps:
            lowest = min(caps, key=lambda c: _int(c.value))
            max_value = min(_int(lowest.value), _int(own_max)) if own_max is not None else lowest.value
            held_back = (f"raise to {max(_int(c.value) for c in raises)} held back by a cap",) if raises else ()
            result[MAX_REPLICAS] = Resolved(max_value, notes=held_back)
        elif raises:
            highest = max(_int(c.value) for c in raises)
            max_value = max(highest, _int(own_max)) if own_max is not None else highest
            result[MAX_REPLICAS] = Resolved(max_value)
        else:
            result[MAX_REPLICAS] = Resolved(own_max)

    # The effective ceiling: the guard's, the live caps, and the object's own maximum as it is going to be.
    limits = [ceiling, *(_int(c.value) for c in caps)]
    if max_value is not None:
        limits.append(_int(max_value))
    effective_ceiling = min(limits)

    floors = [c for c in claims.on(MIN_REPLICAS) if c.want == Want.FLOOR and c.value is not None]
    floor_value: int | None = None
    if floors:
        wanted = max(_int(c.value) for c in floors)
        floor_value = min(wanted, effective_ceiling)
        clamped = (f"floor {wanted} clamped to the ceiling of {effective_ceiling}",) if floor_value < wanted else ()
        result[MIN_REPLICAS] = Resolved(floor_value, notes=clamped)
    elif MIN_REPLICAS in claims.kept:
        result[MIN_REPLICAS] = Resolved(original[MIN_REPLICAS])

    pauses = [c for c in claims.on(PAUSED_REPLICAS) if c.want == Want.PAUSE and c.value is not None]
    if pauses:
        held = max([*(_int(c.value) for c in pauses), *([floor_value] if floor_value is not None else [])])
        below = tuple(c for c in caps if _int(c.value) < held)
        notes: list[str] = []
        if floor_value is not None and floor_value > max(_int(c.value) for c in pauses):
            notes.append(f"paused at the floor of {floor_value}, above the pause's count")
        notes.extend(f"cap {c.value} ({c.holder}) is below the paused count of {held}: not applied" for c in below)
        result[PAUSED_REPLICAS] = Resolved(held, notes=tuple(notes), conflicts=below)
    elif PAUSED_REPLICAS in claims.kept:
        result[PAUSED_REPLICAS] = Resolved(original[PAUSED_REPLICAS])

    for name in claims.kept:
        if name in (MAX_REPLICAS, MIN_REPLICAS, PAUSED_REPLICAS):
            continue
        holds = [c for c in claims.on(name) if c.want == Want.HOLD]
        result[name] = Resolved(True if holds else original[name])
    return result


def _int(value: Value) -> int:
    assert isinstance(value, int) and not isinstance(value, bool), value
    return value
