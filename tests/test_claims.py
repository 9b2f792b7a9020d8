"""Claims: the value of a field from every reason that holds it, in every order of arrival and release."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from agent.claims import MAX_CLAIMS, Claim, Claims, Kept, TooManyClaims, Want, resolve
from agent.structs import Ownership

T0 = datetime(2026, 12, 7, 8, tzinfo=UTC)
OBJECT = {"min-replicas": 1, "max-replicas": 10, "paused-replicas": None}


def claim(field: str, want: Want, value: int | None, holder: str, **more: object) -> Claim:
    return Claim(
        field=field,
        want=want,
        value=value,
        holder=holder,
        key=f"key-{holder}",
        decision=f"d-{holder}",
        reason=f"{holder} wants {want} {value}",
        since=T0,
        **more,  # type: ignore[arg-type]
    )


def values(claims: Claims, *, ceiling: int = 50, current: dict[str, int | None] | None = None) -> dict[str, object]:
    return {name: r.value for name, r in resolve(claims, ceiling=ceiling, current=current or OBJECT).items()}


WINDOW = claim("min-replicas", Want.FLOOR, 3, "schedule:business-hours")
ALERT = claim("min-replicas", Want.FLOOR, 5, "rule:warm-floor:f1")


@pytest.mark.parametrize("arrival", list(itertools.permutations([WINDOW, ALERT])))
@pytest.mark.parametrize("release", list(itertools.permutations([WINDOW.holder, ALERT.holder])))
def test_floors_take_the_highest_and_each_release_recomputes_from_the_rest(
    arrival: tuple[Claim, Claim], release: tuple[str, str]
) -> None:
    held = Claims()
    for one in arrival:
        held = held.add(one, current=values(held).get("min-replicas", OBJECT["min-replicas"]))  # type: ignore[arg-type]
    assert values(held) == {"min-replicas": 5}
    assert held.kept["min-replicas"].original == 1  # kept once, from before the first claim

    held, _ = held.release(lambda c: c.holder == release[0])
    assert values(held) == {"min-replicas": 3 if release[0] == ALERT.holder else 5}
    held, dropped = held.release(lambda c: c.holder == release[1])
    assert [c.holder for c in dropped] == [release[1]]
    assert values(held) == {"min-replicas": 1}  # the last claim ended: the original goes back
    assert held.wrote({"min-replicas": 1}) == Claims()  # and the field is forgotten


def test_a_floor_never_passes_the_effective_ceiling_and_says_so() -> None:
    held = Claims().add(claim("min-replicas", Want.FLOOR, 12, "rule:prescale:f1"), current=1)
    [floor] = [r for n, r in resolve(held, ceiling=50, current=OBJECT).items() if n == "min-replicas"]
    assert (floor.value, floor.notes) == (10, ("floor 12 clamped to the ceiling of 10",))  # the object's own max

    held = held.add(claim("max-replicas", Want.CAP, 6, "cost:budget"), current=10)
    resolved = resolve(held, ceiling=50, current=OBJECT)
    assert (resolved["max-replicas"].value, resolved["min-replicas"].value) == (6, 6)
    assert resolve(held, ceiling=4, current=OBJECT)["min-replicas"].value == 4  # the guard's ceiling too


def test_ceilings_take_the_lowest_cap_and_a_raise_lifts_only_when_no_cap_holds() -> None:
    raised = Claims().add(claim("max-replicas", Want.RAISE, 15, "rule:raise-max:f1"), current=10)
    assert values(raised) == {"max-replicas": 15}
    assert values(Claims().add(claim("max-replicas", Want.RAISE, 8, "rule:raise-max:f1"), current=10)) == {
        "max-replicas": 10  # a raise never lowers
    }
    capped = raised.add(claim("max-replicas", Want.CAP, 9, "cost:budget"), current=15)
    capped = capped.add(claim("max-replicas", Want.CAP, 7, "cost:namespace"), current=15)
    resolved = resolve(capped, ceiling=50, current=OBJECT)["max-replicas"]
    assert resolved.value == 7 and resolved.notes == ("raise to 15 held back by a cap",)
    assert capped.kept["max-replicas"].original == 10  # the first claim's view, not the raised value


def test_a_pause_holds_at_the_highest_of_its_count_and_the_live_floor_and_a_cap_below_is_a_conflict() -> None:
    held = Claims().add(claim("paused-replicas", Want.PAUSE, 2, "rule:pause:f1"), current=None)
    assert values(held) == {"paused-replicas": 2}
    held = held.add(claim("min-replicas", Want.FLOOR, 5, "notice:spot-1"), current=1)
    held = held.add(claim("max-replicas", Want.CAP, 4, "cost:budget"), current=10)
    resolved = resolve(held, ceiling=50, current=OBJECT)
    # The cap holds the maximum at 4, so the floor is clamped to 4, and the pause holds at 4: never below its own 2.
    assert resolved["min-replicas"].value == 4
    assert resolved["paused-replicas"].value == 4
    assert resolved["paused-replicas"].conflicts == ()
    held = held.add(claim("paused-replicas", Want.PAUSE, 6, "rule:pause:f2"), current=4)
    resolved = resolve(held, ceiling=50, current=OBJECT)
    assert resolved["paused-replicas"].value == 6  # a loaded service is never scaled down by a disagreement
    assert [c.holder for c in resolved["paused-replicas"].conflicts] == ["cost:budget"]
    assert "cap 4 (cost:budget) is below the paused count of 6: not applied" in resolved["paused-replicas"].notes


def test_a_non_numeric_field_is_held_while_any_claim_holds_it() -> None:
    held = Claims().add(claim("unschedulable", Want.HOLD, None, "notice:spot-1"), current=False)
    held = held.add(claim("unschedulable", Want.HOLD, None, "notice:spot-2"), current=True)
    assert values(held, current={}) == {"unschedulable": True}
    held, _ = held.release(lambda c: c.holder == "notice:spot-1")
    assert values(held, current={}) == {"unschedulable": True}
    held, _ = held.release(lambda c: True)
    assert values(held, current={}) == {"unschedulable": False}


def test_one_claim_per_holder_and_field_and_a_cap_on_claims_per_object() -> None:
    held = Claims().add(claim("min-replicas", Want.FLOOR, 3, "schedule:a"), current=1)
    held = held.add(claim("min-replicas", Want.FLOOR, 4, "schedule:a"), current=3)  # the window's new floor
    assert [c.value for c in held.claims] == [4]
    for i in range(MAX_CLAIMS - 1):
        held = held.add(claim("min-replicas", Want.FLOOR, 2, f"rule:r:{i}"), current=4)
    with pytest.raises(TooManyClaims, match=f"at most {MAX_CLAIMS}"):
        held.add(claim("min-replicas", Want.FLOOR, 9, "rule:one-too-many"), current=4)
    assert len(held.add(claim("min-replicas", Want.FLOOR, 5, "schedule:a"), current=4).claims) == MAX_CLAIMS


def test_someone_elses_edit_is_seen_as_drift() -> None:
    held = Claims().add(claim("min-replicas", Want.FLOOR, 5, "rule:warm:f1"), current=1).wrote({"min-replicas": 5})
    assert not held.drifted("min-replicas", 5)
    assert held.drifted("min-replicas", 7)  # a person, or Argo CD self-healing the object
    assert held.let_go("min-replicas") == Claims()


def test_the_annotation_round_trips_and_names_its_version() -> None:
    held = Claims().add(
        claim("paused-replicas", Want.PAUSE, 3, "rule:pause:f1", until=T0 + timedelta(hours=2), ends_on_resolve=True),
        current=None,
    )
    held = held.add(claim("min-replicas", Want.FLOOR, 2, "schedule:b"), current=0).wrote({"min-replicas": 2})
    assert Claims.from_json(held.to_json()) == held
    with pytest.raises(ValueError, match="version 2"):
        Claims.from_json(held.to_json().replace('"version": 1', '"version": 2'))


def test_changes_written_before_claims_existed_are_read_and_given_back() -> None:
    # The per-field ownership annotations today's executor writes, as JSON on the object.
    written = [
        Ownership(
            field="paused-replicas",
            before=None,
            after=3,
            decision="01M953GNFE2MQ4D93K1EKT55MB",
            rule="pause-frequent-scaling",
            alertname="MCPFrequentScaling",
            fingerprint="f1",
            reason="MCPFrequentScaling: pause at 3 replicas for 2h",
            applied_at=T0,
            expires_at=T0 + timedelta(hours=2),
            revert_on_resolve=True,
            event_key="k1",
            action="pause",
        ),
        Ownership(
            field="max-replicas",
            before=50,
            after=55,
            decision="20261129T091203-4f2a1c",  # an id from before ULIDs, and no action recorded
            rule="raise-max-at-maximum-scale",
            alertname="MCPAtMaximumScale",
            fingerprint="f2",
            reason="MCPAtMaximumScale: raise max-replicas by 5 for 24h",
            applied_at=T0,
            expires_at=T0 + timedelta(hours=24),
            revert_on_resolve=False,
        ),
    ]
    held = Claims.from_ownerships(Ownership.from_json(o.to_json()) for o in written)
    current = {"paused-replicas": 3, "max-replicas": 55, "min-replicas": 1}
    assert values(held, current=current) == {"paused-replicas": 3, "max-replicas": 55}
    assert held.kept == {"paused-replicas": Kept(None, 3), "max-replicas": Kept(50, 55)}
    assert not held.drifted("max-replicas", 55)
    [pause] = held.on("paused-replicas")
    assert (pause.holder, pause.key, pause.until, pause.ends_on_resolve) == (
        "rule:pause-frequent-scaling:f1",
        "k1",
        T0 + timedelta(hours=2),
        True,
    )
    held, _ = held.release(lambda c: c.holder == "rule:pause-frequent-scaling:f1")  # the alert resolved
    assert values(held, current=current) == {"paused-replicas": None, "max-replicas": 55}
    held, _ = held.release(lambda c: c.until is not None and c.until <= T0 + timedelta(days=1))  # expiry
    assert values(held, current=current) == {"paused-replicas": None, "max-replicas": 50}


def test_a_lowered_maximum_from_before_claims_is_read_as_a_cap_even_without_its_action() -> None:
    # Written by the release before claims, before its annotations named their action.
    lowered = Ownership(
        field="max-replicas",
        before=20,
        after=5,
        decision="d-old",
        rule="cap",
        alertname="Cap",
        fingerprint="f1",
        reason="Cap: set max-replicas to 5 for 24h",
        applied_at=T0,
        expires_at=None,
        revert_on_resolve=False,
    )
    held = Claims.from_ownerships([lowered])
    assert [c.want for c in held.claims] == [Want.CAP]
    assert values(held, current={"max-replicas": 5, "min-replicas": 0, "paused-replicas": None}) == {"max-replicas": 5}
