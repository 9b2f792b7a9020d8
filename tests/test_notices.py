"""
Preemption notices and scale intents: every format decodes its real shape to the same records, a bad message
says in one line what is wrong, and a notice finds its Node by ``spec.providerID`` on each cloud.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.notices import (
    FORMATS,
    DecodeError,
    InstanceRef,
    Intent,
    Message,
    Notice,
    aks_node_name,
    aws,
    azure,
    decode_any,
    find_node,
    gcp,
    native,
    parse_provider_id,
)

NOW = datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC)

AWS_WARNING: dict[str, Any] = {
    "version": "0",
    "id": "7bf73129-1428-4cd3-a780-95db273d1602",
    "detail-type": "EC2 Spot Instance Interruption Warning",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2024-05-01T12:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0b1c2d3e4f5a6b7c8"],
    "detail": {"instance-id": "i-0b1c2d3e4f5a6b7c8", "instance-action": "terminate"},
}
AWS_REBALANCE: dict[str, Any] = {
    "version": "0",
    "id": "1e5527d7-bb36-4607-3370-4164db56a40e",
    "detail-type": "EC2 Instance Rebalance Recommendation",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2024-05-01T11:58:10Z",
    "region": "us-east-1",
    "resources": ["arn:aws:ec2:us-east-1:123456789012:instance/i-0b1c2d3e4f5a6b7c8"],
    "detail": {"instance-id": "i-0b1c2d3e4f5a6b7c8"},
}
GCP_AUDIT: dict[str, Any] = {
    "insertId": "-8vlo4ce2kd6q",
    "logName": "projects/shop-prod/logs/cloudaudit.googleapis.com%2Fsystem_event",
    "operation": {
        "id": "systemevent-1714564800123-61f2e3a4b5c6d-7e8f9a0b-1c2d3e4f",
        "producer": "compute.instances.preempted",
        "first": True,
        "last": True,
    },
    "protoPayload": {
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "authenticationInfo": {"principalEmail": "system@google.com"},
        "methodName": "compute.instances.preempted",
        "request": {"@type": "type.googleapis.com/compute.instances.preempted"},
        "resourceName": "projects/shop-prod/zones/europe-west1-b/instances/gke-shop-spot-pool-5b9f1c2e-x7kq",
        "serviceName": "compute.googleapis.com",
        "status": {"message": "Instance was preempted."},
    },
    "receiveTimestamp": "2024-05-01T12:00:01.456789Z",
    "resource": {
        "labels": {"instance_id": "4412398761239876123", "project_id": "shop-prod", "zone": "europe-west1-b"},
        "type": "gce_instance",
    },
    "severity": "INFO",
    "timestamp": "2024-05-01T12:00:00.123456Z",
}
GCP_WATCHER: dict[str, Any] = {
    "source": "gce-metadata",
    "type": "preempted",
    "project": "shop-prod",
    "zone": "europe-west1-b",
    "instance": "gke-shop-spot-pool-5b9f1c2e-x7kq",
    "time": "2024-05-01T11:59:58Z",
}


def azure_document(*events: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"DocumentIncarnation": 3, "Events": list(events), **extra}


def azure_event(resources: list[str], **fields: Any) -> dict[str, Any]:
    return {
        "EventId": "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
        "EventType": "Preempt",
        "ResourceType": "VirtualMachine",
        "Resources": resources,
        "EventStatus": "Scheduled",
        "NotBefore": "Wed, 01 May 2024 12:00:30 GMT",
        "Description": "",
        "EventSource": "Platform",
        "DurationInSeconds": -1,
        **fields,
    }


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


def one(messages: list[Message]) -> Notice:
    assert len(messages) == 1
    notice = messages[0]
    assert isinstance(notice, Notice)
    return notice


def error_of(data: Any) -> str:
    with pytest.raises(DecodeError) as caught:
        decode_any(data if isinstance(data, bytes) else body(data), now=NOW)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- AWS ---------------------------------------------------------------------------------------------------------


def test_aws_spot_interruption_warning_gives_two_minutes_from_the_event_time() -> None:
    notice = one(decode_any(body(AWS_WARNING)))
    assert notice.id == "7bf73129-1428-4cd3-a780-95db273d1602"
    assert (notice.cloud, notice.kind, notice.late) == ("aws", "preemption", False)
    assert notice.instance == InstanceRef(cloud="aws", instance_id="i-0b1c2d3e4f5a6b7c8", region="us-east-1")
    assert notice.received == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert notice.deadline == datetime(2024, 5, 1, 12, 2, tzinfo=UTC)
    assert (notice.node, notice.provider_id) == (None, None)
    assert "i-0b1c2d3e4f5a6b7c8" in notice.reason and "terminate" in notice.reason
    assert aws.decode(body(AWS_WARNING)) == [notice]


def test_aws_hibernation_begins_at_once_so_the_notice_is_late() -> None:
    event = {**AWS_WARNING, "detail": {"instance-id": "i-0b1c2d3e4f5a6b7c8", "instance-action": "hibernate"}}
    notice = one(decode_any(body(event)))
    assert notice.deadline == notice.received and notice.late


def test_aws_rebalance_recommendation_has_no_deadline() -> None:
    notice = one(decode_any(body(AWS_REBALANCE)))
    assert (notice.id, notice.kind, notice.deadline) == ("1e5527d7-bb36-4607-3370-4164db56a40e", "rebalance", None)
    assert notice.instance is not None and notice.instance.instance_id == "i-0b1c2d3e4f5a6b7c8"
    assert notice.received == datetime(2024, 5, 1, 11, 58, 10, tzinfo=UTC)


def test_aws_event_without_region_still_decodes() -> None:
    event = {key: value for key, value in AWS_REBALANCE.items() if key != "region"}
    notice = one(decode_any(body(event)))
    assert notice.instance == InstanceRef(cloud="aws", instance_id="i-0b1c2d3e4f5a6b7c8")


# --- GCP ---------------------------------------------------------------------------------------------------------


def test_gcp_audit_log_entry_is_late_with_thirty_seconds_from_its_timestamp() -> None:
    notice = one(decode_any(body(GCP_AUDIT)))
    assert (notice.id, notice.cloud, notice.kind, notice.late) == ("-8vlo4ce2kd6q", "gcp", "preemption", True)
    assert notice.instance == InstanceRef(
        cloud="gcp", project="shop-prod", zone="europe-west1-b", name="gke-shop-spot-pool-5b9f1c2e-x7kq"
    )
    stamp = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert (notice.received, notice.deadline) == (stamp, stamp + timedelta(seconds=30))
    assert "Instance was preempted." in notice.reason
    assert gcp.decode(body(GCP_AUDIT)) == [notice]


def test_gcp_audit_log_entry_without_insert_id_is_keyed_by_instance_and_time() -> None:
    entry = {key: value for key, value in GCP_AUDIT.items() if key != "insertId"}
    assert one(decode_any(body(entry))).id == "4412398761239876123@2024-05-01T12:00:00.123456+00:00"


def test_gcp_metadata_watcher_message_is_timely() -> None:
    notice = one(decode_any(body(GCP_WATCHER)))
    assert notice.instance == InstanceRef(
        cloud="gcp", project="shop-prod", zone="europe-west1-b", name="gke-shop-spot-pool-5b9f1c2e-x7kq"
    )
    assert notice.deadline == datetime(2024, 5, 1, 12, 0, 28, tzinfo=UTC) and not notice.late
    assert notice.id == "shop-prod/europe-west1-b/gke-shop-spot-pool-5b9f1c2e-x7kq@2024-05-01T11:59:58+00:00"


# --- Azure -------------------------------------------------------------------------------------------------------


def test_azure_preempt_of_a_vm() -> None:
    document = azure_document(azure_event(["spot-worker-3"]), subscription="0b1f6471-1bf0-4dda-aec3-cb9272f09590")
    notice = one(decode_any(body(document)))
    assert notice.id == "C7061BAC-AFDC-4513-B24B-AA5F13A16123"
    assert notice.instance == InstanceRef(
        cloud="azure", subscription="0b1f6471-1bf0-4dda-aec3-cb9272f09590", vm_name="spot-worker-3"
    )
    assert notice.deadline == datetime(2024, 5, 1, 12, 0, 30, tzinfo=UTC) and not notice.late
    assert notice.received is None


def test_azure_preempt_of_a_scale_set_instance_with_its_group() -> None:
    event = azure_event(["_aks-nodepool1-12345678-vmss_35"], EventStatus="Started")
    document = azure_document(event, subscription="SUB", resourceGroup="MC_shop_aks_westeurope")
    notice = one(azure.decode(body(document)))
    assert notice.instance == InstanceRef(
        cloud="azure",
        subscription="SUB",
        resource_group="MC_shop_aks_westeurope",
        vmss="aks-nodepool1-12345678-vmss",
        instance=35,
    )
    assert notice.late  # already started


def test_azure_other_events_are_ignored_and_each_evicted_vm_is_one_notice() -> None:
    reboot = azure_event(["spot-worker-3"], EventType="Reboot", EventId="A1")
    assert decode_any(body(azure_document(reboot))) == []
    assert decode_any(body(azure_document())) == []
    both = azure_event(["aks-pool-vmss_1", "aks-pool-vmss_2"], NotBefore="")
    notices = decode_any(body(azure_document(reboot, both)))
    assert [n.id for n in notices] == [
        "C7061BAC-AFDC-4513-B24B-AA5F13A16123/aks-pool-vmss_1",
        "C7061BAC-AFDC-4513-B24B-AA5F13A16123/aks-pool-vmss_2",
    ]
    assert all(isinstance(n, Notice) and n.deadline is None for n in notices)


# --- Native ------------------------------------------------------------------------------------------------------


def test_native_preemption_by_node_with_a_deadline() -> None:
    message = {
        "type": "preemption",
        "id": "evict-42",
        "node": "ip-10-0-1-23.ec2.internal",
        "deadline": "2024-05-01T14:02:00+02:00",
        "reason": "spot capacity reclaimed",
    }
    notice = one(decode_any(body(message), now=NOW))
    assert (notice.id, notice.cloud, notice.node, notice.instance) == (
        "evict-42",
        "native",
        "ip-10-0-1-23.ec2.internal",
        None,
    )
    assert notice.deadline == datetime(2024, 5, 1, 12, 2, tzinfo=UTC) and notice.deadline.tzinfo is UTC
    assert notice.reason == "spot capacity reclaimed"


def test_native_preemption_by_provider_id_in_a_duration() -> None:
    message = {
        "type": "preemption",
        "id": "evict-43",
        "providerID": "aws:///us-east-1a/i-0abc123def4567890",
        "in": "90s",
    }
    notice = one(native.decode(body(message), now=NOW))
    assert notice.provider_id == "aws:///us-east-1a/i-0abc123def4567890"
    assert notice.instance == InstanceRef(cloud="aws", instance_id="i-0abc123def4567890", zone="us-east-1a")
    assert notice.deadline == NOW + timedelta(seconds=90)
    sent = {**message, "in": "2m", "time": "2024-05-01T12:00:00Z"}
    notice = one(decode_any(body(sent), now=NOW))
    assert notice.deadline == datetime(2024, 5, 1, 12, 2, tzinfo=UTC)  # from the message's time, not from now
    assert notice.received == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert one(decode_any(body({**message, "in": 45}), now=NOW)).deadline == NOW + timedelta(seconds=45)


def test_native_intent() -> None:
    message = {
        "type": "intent",
        "id": "nightly-batch-2024-05-02",
        "target": {"kind": "ScaledObject", "namespace": "batch", "name": "workers"},
        "floor": 20,
        "from": "2024-05-02T01:45:00Z",
        "until": "2024-05-02T04:00:00Z",
        "reason": "a batch of 50,000 tasks lands at 02:00",
    }
    assert decode_any(body(message)) == [
        Intent(
            id="nightly-batch-2024-05-02",
            target_kind="ScaledObject",
            namespace="batch",
            name="workers",
            floor=20,
            starts=datetime(2024, 5, 2, 1, 45, tzinfo=UTC),
            until=datetime(2024, 5, 2, 4, tzinfo=UTC),
            reason="a batch of 50,000 tasks lands at 02:00",
        )
    ]
    default_kind = {**message, "target": {"namespace": "batch", "name": "workers"}, "floor": 0}
    intent = decode_any(body(default_kind))[0]
    assert isinstance(intent, Intent) and (intent.target_kind, intent.floor) == ("ScaledObject", 0)


# --- Errors ------------------------------------------------------------------------------------------------------

NATIVE_INTENT: dict[str, Any] = {
    "type": "intent",
    "id": "i-1",
    "target": {"namespace": "batch", "name": "workers"},
    "floor": 5,
    "from": "2024-05-02T01:00:00Z",
    "until": "2024-05-02T02:00:00Z",
}
NATIVE_PREEMPTION: dict[str, Any] = {"type": "preemption", "id": "p-1", "node": "node-1", "in": "30s"}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"{not json", "malformed JSON: object keys must be strings (byte 1)"),
        (b"\xff", "malformed JSON: "),
        (b"[1, 2]", "expected a JSON object, got an array"),
        ({"hello": "world"}, "unknown format: a JSON object with keys [hello] is none of aws, gcp, azure, native"),
        (
            {**AWS_WARNING, "detail": {"instance-action": "terminate"}},
            "aws spot interruption warning: detail.instance-id: is required",
        ),
        (
            {**AWS_WARNING, "detail": {"instance-id": "i-0abc", "instance-action": "explode"}},
            "aws spot interruption warning: detail.instance-action: invalid enum value 'explode'",
        ),
        (
            {**AWS_REBALANCE, "detail": {"instance-id": "vm-7"}},
            "aws rebalance recommendation: detail.instance-id: expected `str` matching regex '^i-[0-9a-f]+$'",
        ),
        (
            {**AWS_WARNING, "detail-type": "EC2 Instance State-change Notification"},
            "aws: detail-type: 'EC2 Instance State-change Notification' is not read here",
        ),
        ({**AWS_WARNING, "time": "2024-05-01T12:00:00"}, "time: expected `datetime` with a timezone component"),
        (
            {**GCP_AUDIT, "protoPayload": {**GCP_AUDIT["protoPayload"], "methodName": "v1.compute.instances.insert"}},
            "gcp audit-log entry: protoPayload.methodName: 'v1.compute.instances.insert' is not a preemption",
        ),
        (
            {**GCP_AUDIT, "protoPayload": {**GCP_AUDIT["protoPayload"], "resourceName": "projects/p/zones/z"}},
            "gcp audit-log entry: protoPayload.resourceName: 'projects/p/zones/z' is not projects/PROJECT/zones/",
        ),
        ({**GCP_WATCHER, "instance": ""}, "gcp metadata watcher message: instance: must not be empty"),
        (
            azure_document(azure_event([], EventId="E1")),
            "azure scheduled events: Events[0].Resources: a Preempt event must name the VM it evicts",
        ),
        (
            azure_document(azure_event(["vm1"], NotBefore="tomorrow")),
            "azure scheduled events: Events[0].NotBefore: 'tomorrow' is not a date",
        ),
        ({"DocumentIncarnation": 1, "Events": [{"EventType": "Preempt"}]}, "Events[0].EventId: is required"),
        (
            {"type": "preemption", "id": "p-1", "in": "30s"},
            "native preemption: node, providerID: give one of node (the Node's name) or providerID",
        ),
        ({**NATIVE_PREEMPTION, "providerID": "aws:///z/i-0abc"}, "native preemption: node, providerID: give only one"),
        ({**NATIVE_PREEMPTION, "in": None}, "native preemption: deadline, in: give one of deadline"),
        ({**NATIVE_PREEMPTION, "deadline": "2024-05-01T12:00:00Z"}, "native preemption: deadline, in: give only one"),
        ({**NATIVE_PREEMPTION, "in": "soon"}, "native preemption: in: 'soon' is not a duration such as 90s"),
        ({**NATIVE_PREEMPTION, "in": -5}, "native preemption: in: must not be negative"),
        (
            {"type": "preemption", "id": "p-1", "providerID": "kind://docker/kind/kind-worker", "in": "30s"},
            "native preemption: providerID: 'kind://docker/kind/kind-worker' is not an AWS",
        ),
        ({**NATIVE_PREEMPTION, "deadine": "2024-05-01T12:00:00Z"}, "native preemption: deadine: is not a field"),
        ({**NATIVE_PREEMPTION, "id": ""}, "native preemption: id: must not be empty"),
        (
            {**NATIVE_INTENT, "until": "2024-05-02T00:30:00Z"},
            "native intent: until: 2024-05-02T00:30:00+00:00 is not after from (2024-05-02T01:00:00+00:00)",
        ),
        ({**NATIVE_INTENT, "floor": -1}, "native intent: floor: expected `int` >= 0"),
        ({**NATIVE_INTENT, "target": {"name": "workers"}}, "native intent: target.namespace: is required"),
        (
            {**NATIVE_INTENT, "target": {**NATIVE_INTENT["target"], "kind": "Job"}},
            "native intent: target.kind: invalid",
        ),
        ({key: v for key, v in NATIVE_INTENT.items() if key != "from"}, "native intent: from: is required"),
    ],
)
def test_a_bad_message_says_what_is_wrong_in_one_line(data: Any, expected: str) -> None:
    assert expected in error_of(data)


def test_the_unknown_format_message_names_only_the_first_keys() -> None:
    message = error_of({f"k{i:02}": i for i in range(12)})
    assert message.startswith("unknown format: a JSON object with keys [k00, k01, k02, k03, k04, k05, k06, k07, …")
    assert "(12 keys)" in message


def test_every_fixture_is_claimed_by_exactly_its_format() -> None:
    fixtures = {
        "aws": [AWS_WARNING, AWS_REBALANCE],
        "gcp": [GCP_AUDIT, GCP_WATCHER],
        "azure": [azure_document(azure_event(["vm1"]))],
        "native": [NATIVE_INTENT, NATIVE_PREEMPTION],
    }
    for name, samples in fixtures.items():
        for sample in samples:
            assert [fmt for fmt, module in FORMATS.items() if module.matches(sample)] == [name]


# --- Provider IDs and Nodes --------------------------------------------------------------------------------------

AZ_VM = (
    "azure:///subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/shop-rg"
    "/providers/Microsoft.Compute/virtualMachines/spot-worker-3"
)
AZ_VMSS = (
    "azure:///subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/mc_shop_aks_westeurope"
    "/providers/Microsoft.Compute/virtualMachineScaleSets/aks-nodepool1-12345678-vmss/virtualMachines/35"
)


def test_provider_ids_of_the_three_clouds() -> None:
    assert parse_provider_id("aws:///us-east-1a/i-0abc123def4567890") == InstanceRef(
        cloud="aws", instance_id="i-0abc123def4567890", zone="us-east-1a"
    )
    assert parse_provider_id("aws:////i-0abc123def4567890") == InstanceRef(
        cloud="aws", instance_id="i-0abc123def4567890"
    )
    assert parse_provider_id("gce://shop-prod/europe-west1-b/gke-shop-spot-pool-5b9f1c2e-x7kq") == InstanceRef(
        cloud="gcp", project="shop-prod", zone="europe-west1-b", name="gke-shop-spot-pool-5b9f1c2e-x7kq"
    )
    assert parse_provider_id(AZ_VM) == InstanceRef(
        cloud="azure",
        subscription="0b1f6471-1bf0-4dda-aec3-cb9272f09590",
        resource_group="shop-rg",
        vm_name="spot-worker-3",
    )
    assert parse_provider_id(AZ_VMSS) == InstanceRef(
        cloud="azure",
        subscription="0b1f6471-1bf0-4dda-aec3-cb9272f09590",
        resource_group="mc_shop_aks_westeurope",
        vmss="aks-nodepool1-12345678-vmss",
        instance=35,
    )
    for other in ("", "kind://docker/kind/kind-worker", "aws:///us-east-1a/fargate-ip-10-0-1-2", "gce://p/z"):
        assert parse_provider_id(other) is None


@pytest.mark.parametrize(("instance", "suffix"), [(0, "000000"), (35, "00000z"), (36, "000010"), (36**2 + 5, "000105")])
def test_aks_node_names_number_instances_in_base_36(instance: int, suffix: str) -> None:
    assert aks_node_name("aks-nodepool1-12345678-vmss", instance) == f"aks-nodepool1-12345678-vmss{suffix}"


def node(name: str, provider_id: str | None) -> dict[str, Any]:
    spec = {} if provider_id is None else {"providerID": provider_id}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": spec}


NODES = [
    node("ip-10-0-1-23.ec2.internal", "aws:///us-east-1a/i-0b1c2d3e4f5a6b7c8"),
    node("ip-10-0-2-9.ec2.internal", "aws:///us-east-1b/i-0ffffffffffffffff"),
    node("gke-shop-spot-pool-5b9f1c2e-x7kq", "gce://shop-prod/europe-west1-b/gke-shop-spot-pool-5b9f1c2e-x7kq"),
    node("gke-shop-spot-pool-5b9f1c2e-abcd", "gce://shop-prod/europe-west1-c/gke-shop-spot-pool-5b9f1c2e-abcd"),
    node("spot-worker-3", AZ_VM),
    node("aks-nodepool1-12345678-vmss00000z", AZ_VMSS),
    node("aks-nodepool1-12345678-vmss000010", None),  # no providerID (yet): only the AKS name rule finds it
    node("kind-worker", "kind://docker/kind/kind-worker"),
]


def azure_notice(resource: str, **top: str) -> Notice:
    return one(decode_any(body(azure_document(azure_event([resource]), **top))))


def test_each_cloud_finds_its_node_by_provider_id() -> None:
    assert find_node(one(decode_any(body(AWS_WARNING))), NODES) == "ip-10-0-1-23.ec2.internal"
    assert find_node(one(decode_any(body(GCP_AUDIT))), NODES) == "gke-shop-spot-pool-5b9f1c2e-x7kq"
    assert find_node(one(decode_any(body(GCP_WATCHER))), NODES) == "gke-shop-spot-pool-5b9f1c2e-x7kq"
    sub = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
    assert find_node(azure_notice("spot-worker-3", subscription=sub, resourceGroup="shop-rg"), NODES) == "spot-worker-3"
    assert find_node(azure_notice("spot-worker-3"), NODES) == "spot-worker-3"  # by name alone


def test_azure_resource_groups_compare_without_case_and_subscriptions_exactly() -> None:
    vmss_vm = "_aks-nodepool1-12345678-vmss_35"
    sub = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
    upper = azure_notice(vmss_vm, subscription=sub, resourceGroup="MC_shop_aks_westeurope")
    assert find_node(upper, NODES) == "aks-nodepool1-12345678-vmss00000z"
    other_group = azure_notice(vmss_vm, subscription=sub, resourceGroup="other-rg")
    assert find_node(other_group, NODES) is None
    other_subscription = azure_notice(vmss_vm, subscription=sub.upper(), resourceGroup="MC_shop_aks_westeurope")
    assert find_node(other_subscription, NODES) is None


def test_a_scale_set_vm_without_its_group_falls_back_to_the_aks_node_name() -> None:
    assert find_node(azure_notice("_aks-nodepool1-12345678-vmss_35"), NODES) == "aks-nodepool1-12345678-vmss00000z"
    assert find_node(azure_notice("aks-nodepool1-12345678-vmss_36"), NODES) == "aks-nodepool1-12345678-vmss000010"
    with_group = azure_notice("aks-nodepool1-12345678-vmss_36", subscription="S", resourceGroup="G")
    assert find_node(with_group, NODES) is None  # known group, no such providerID: the name rule is not used


def test_aws_zone_must_agree_when_both_sides_know_it() -> None:
    message = {"type": "preemption", "id": "p-3", "providerID": "aws:///us-east-1c/i-0b1c2d3e4f5a6b7c8", "in": "1m"}
    assert find_node(one(decode_any(body(message), now=NOW)), NODES) is None
    message["providerID"] = "aws:////i-0b1c2d3e4f5a6b7c8"  # no zone: the instance id decides
    assert find_node(one(decode_any(body(message), now=NOW)), NODES) == "ip-10-0-1-23.ec2.internal"


def test_native_notices_name_their_node_directly() -> None:
    assert find_node(one(decode_any(body(NATIVE_PREEMPTION), now=NOW)), [*NODES, node("node-1", None)]) == "node-1"
    by_provider = {"type": "preemption", "id": "p-2", "providerID": "kind://docker/kind/kind-worker", "in": "1m"}
    with pytest.raises(DecodeError):
        decode_any(body(by_provider), now=NOW)  # not a cloud's providerID: refused when decoded
    exact = {**by_provider, "providerID": AZ_VMSS}
    assert find_node(one(decode_any(body(exact), now=NOW)), NODES) == "aks-nodepool1-12345678-vmss00000z"


def test_an_unknown_machine_or_node_is_none() -> None:
    gone = {**AWS_WARNING, "detail": {"instance-id": "i-00000000000000000", "instance-action": "stop"}}
    assert find_node(one(decode_any(body(gone))), NODES) is None
    assert find_node(one(decode_any(body(NATIVE_PREEMPTION), now=NOW)), NODES) is None  # node-1 is not listed
    assert find_node(azure_notice("spot-worker-9"), NODES) is None
    assert find_node(one(decode_any(body(GCP_WATCHER))), []) is None


def test_two_nodes_for_one_machine_is_no_match() -> None:
    twins = [node("a", "aws:///us-east-1a/i-0b1c2d3e4f5a6b7c8"), node("b", "aws:////i-0b1c2d3e4f5a6b7c8")]
    assert find_node(one(decode_any(body(AWS_WARNING))), twins) is None


def test_nodes_as_a_client_to_dict_gives_them() -> None:
    snake = [{"metadata": {"name": "n1"}, "spec": {"provider_id": "aws:///us-east-1a/i-0b1c2d3e4f5a6b7c8"}}]
    assert find_node(one(decode_any(body(AWS_WARNING))), snake) == "n1"
