"""
Claims: many reasons holding one object's fields at once, and the value each field gets from them.

With one owner per field (the per-field ownership annotations of the release
before claims), a second reason on an owned field could only be a no-op. The
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

# Every annotation the agent writes lives under this prefix.
ANNOTATION_PREFIX = "scaling-agent.cortex.io/"
ANNOTATION = f"{ANNOTATION_PREFIX}claims"
VERSION = 1
MAX_CLAIMS = 32  # per object: a selector or a storm must not grow an annotation without bound
RECENT = 8  # the ids of the last decisions that wrote the annotation, to tell whether a write landed

# The abstract fields claims hold; each target kind maps them onto its own object.
PAUSED_REPLICAS = "paused-replicas"  # a KEDA ScaledObject's paused-replicas annotation
MIN_REPLICAS = "min-replicas"  # a floor: minReplicaCount, an HPA's minReplicas
MAX_REPLICAS = "max-replicas"  # a ceiling: maxReplicaCount, an HPA's maxReplicas
REPLICAS = "replicas"  # a workload nothing autoscales: its scale subresource's spec.replicas
UNSCHEDULABLE = "unschedulable"  # a Node's cordon
TAINT = "taint"  # the agent's own NoSchedule taint on a Node
COUNTS = (PAUSED_REPLICAS, MIN_REPLICAS, MAX_REPLICAS, REPLICAS)

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
    replicas: int | None = None  # the replicas it implied when taken (signed): its give-back is priced as the opposite

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
            **({"replicas": self.replicas} if self.replicas is not None else {}),
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
            replicas=data.get("replicas"),
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
    """Everything the agent holds on one object: the kept values per field, the live claims, recent writers."""

    kept: Mapping[str, Kept] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()
    recent: tuple[str, ...] = ()  # the decisions that wrote this annotation last, newest last

    def on(self, name: str) -> tuple[Claim, ...]:
        return tuple(c for c in self.claims if c.field == name)

    def held_by(self, holder: str, name: str) -> Claim | None:
        return next((c for c in self.claims if c.field == name and c.holder == holder), None)

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
        return replace(self, kept=kept, claims=(*others, claim))

    def release(self, ends: Callable[[Claim], bool]) -> tuple[Claims, tuple[Claim, ...]]:
        """Drop the claims ``ends`` picks; returns what is left and what was dropped."""
        dropped = tuple(c for c in self.claims if ends(c))
        return replace(self, claims=tuple(c for c in self.claims if not ends(c))), dropped

    def wrote(self, values: Mapping[str, Value], *, decision: str | None = None) -> Claims:
        """
        The agent wrote these values (as ``decision``); a field with no claim left is forgotten (its original
        is back).
        """
        kept = dict(self.kept)
        for name, value in values.items():
            if name in kept:
                kept[name] = replace(kept[name], written=value)
        for name in list(kept):
            if not self.on(name):
                del kept[name]
        recent = self.recent if decision is None else (*self.recent, decision)[-RECENT:]
        return replace(self, kept=kept, recent=recent)

    def drifted(self, name: str, current: Value) -> bool:
        """Someone else changed the field: it no longer holds the value the agent last wrote."""
        return name in self.kept and current != self.kept[name].written

    def let_go(self, name: str) -> Claims:
        """Drop the field altogether (after someone else changed it): its claims, and its kept values."""
        kept = {n: k for n, k in self.kept.items() if n != name}
        return replace(self, kept=kept, claims=tuple(c for c in self.claims if c.field != name))

    def original(self, name: str, current: Value) -> Value:
        """The field's value before the agent's claims on it (its current value when it has none)."""
        return self.kept[name].original if name in self.kept else current

    @property
    def empty(self) -> bool:
        return not self.claims and not self.kept

    # --- on the object ---------------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "kept": {n: {"original": k.original, "written": k.written} for n, k in sorted(self.kept.items())},
                "claims": [c.to_dict() for c in self.claims],
                "recent": list(self.recent),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Claims:
        data = json.loads(text)
        if data.get("version") != VERSION:
            raise ValueError(f"claims annotation version {data.get('version')!r}; this agent reads {VERSION}")
        kept = {n: Kept(original=k.get("original"), written=k.get("written")) for n, k in data["kept"].items()}
        claims = tuple(Claim.from_dict(c) for c in data["claims"])
        return cls(kept=kept, claims=claims, recent=tuple(str(d) for d in data.get("recent", [])))

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
        return cls(kept=kept, claims=tuple(claims), recent=tuple(sorted({o.decision for o in owned})))


def _want_of(ownership: Ownership) -> Want:
    if ownership.field == PAUSED_REPLICAS:
        return Want.PAUSE
    if ownership.field == MIN_REPLICAS:
        return Want.FLOOR
    # A raise never lowers: a lowered maximum was a cap, whether or not the annotation names its action.
    lowered = ownership.before is not None and ownership.after is not None and ownership.after < ownership.before
    return Want.CAP if lowered else Want.RAISE


def resolve(claims: Claims, *, ceiling: int, current: Mapping[str, Value]) -> dict[str, Resolved]:
    """
    The value of every field that has kept values (claimed now, or claimed until just now), by the rules in the
    module's docstring. ``ceiling`` is the guard's; ``current`` the object's values now (its own maximum among
    them). A field whose claims all ended resolves to its original.
    """
    result: dict[str, Resolved] = {}
    original = {name: k.original for name, k in claims.kept.items()}

    def wanting(want: Want, name: str | None = None) -> list[Claim]:
        return [c for c in claims.claims if c.want == want and c.value is not None and name in (None, c.field)]

    caps = wanting(Want.CAP)
    raises = wanting(Want.RAISE, MAX_REPLICAS)
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

    floors = wanting(Want.FLOOR)
    floor_value: int | None = None
    floor_notes: tuple[str, ...] = ()
    if floors:
        wanted = max(_int(c.value) for c in floors)
        floor_value = min(wanted, effective_ceiling)
        if floor_value < wanted:
            floor_notes = (f"floor {wanted} clamped to the ceiling of {effective_ceiling}",)
    if MIN_REPLICAS in claims.kept:
        if wanting(Want.FLOOR, MIN_REPLICAS) and floor_value is not None:
            below = original.get(MIN_REPLICAS)
            # A floor never lowers what was there (unless the ceiling forces it: KEDA rejects min > max).
            lifted = max(floor_value, min(_int(below), effective_ceiling)) if isinstance(below, int) else floor_value
            result[MIN_REPLICAS] = Resolved(lifted, notes=floor_notes)
        else:
            result[MIN_REPLICAS] = Resolved(original[MIN_REPLICAS])

    if REPLICAS in claims.kept:
        # A workload nothing autoscales: floors lift its replica count, caps lower it, and a cap wins.
        count = original[REPLICAS]
        notes: list[str] = list(floor_notes) if wanting(Want.FLOOR, REPLICAS) else []
        if wanting(Want.FLOOR, REPLICAS) and floor_value is not None:
            count = max(_int(count) if count is not None else 0, floor_value)
        if caps and count is not None:
            count = min(_int(count), min(_int(c.value) for c in caps))
        result[REPLICAS] = Resolved(count, notes=tuple(notes))

    pauses = wanting(Want.PAUSE)
    if pauses:
        # One held count for every field a pause holds (KEDA's paused-replicas; an HPA's min and max alike).
        held = max([*(_int(c.value) for c in pauses), *([floor_value] if floor_value is not None else [])])
        conflicts = tuple(c for c in caps if _int(c.value) < held)
        pause_notes: list[str] = []
        if floor_value is not None and floor_value > max(_int(c.value) for c in pauses):
            pause_notes.append(f"paused at the floor of {floor_value}, above the pause's count")
        pause_notes.extend(
            f"cap {c.value} ({c.holder}) is below the paused count of {held}: not applied" for c in conflicts
        )
        for name in sorted({c.field for c in pauses}):
            result[name] = Resolved(held, notes=tuple(pause_notes), conflicts=conflicts)
    if PAUSED_REPLICAS in claims.kept and not wanting(Want.PAUSE, PAUSED_REPLICAS):
        result[PAUSED_REPLICAS] = Resolved(original[PAUSED_REPLICAS])

    for name in claims.kept:
        if name in COUNTS:
            continue
        holds = [c for c in claims.on(name) if c.want == Want.HOLD]
        result[name] = Resolved(True if holds else original[name])
    return result


def _int(value: Value) -> int:
    assert isinstance(value, int) and not isinstance(value, bool), value
    return value
