"""--dry-run: real boto3 clients whose requests are recorded and answered locally.

The publish code runs unchanged; each call is validated against the service model by botocore,
recorded, and answered as if the account held nothing yet. No request leaves the machine, so
no credentials are needed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.awsrequest import AWSResponse, HTTPHeaders

Responder = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Call:
    service: str
    region: str
    operation: str
    params: dict[str, Any]


def _snapshots(region: str, params: dict[str, Any]) -> dict[str, Any]:
    ids = params.get("SnapshotIds", [])
    return {"Snapshots": [{"SnapshotId": i, "State": "completed", "Progress": "100%"} for i in ids]}


def _images(region: str, params: dict[str, Any]) -> dict[str, Any]:
    mappings = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": f"snap-dry-run-{region}"}}]
    ids = params.get("ImageIds", [])
    return {"Images": [{"ImageId": i, "State": "available", "BlockDeviceMappings": mappings}
                       for i in ids]}  # fmt: skip


def _empty(region: str, params: dict[str, Any]) -> dict[str, Any]:
    return {}


def _http(status: int) -> AWSResponse:
    return AWSResponse("dry-run", status, HTTPHeaders(), None)


RESPONSES: dict[str, Responder] = {
    "DescribeSnapshots": _snapshots,
    "DescribeImages": _images,
    "StartSnapshot": lambda region, p: {
        "SnapshotId": f"snap-dry-run-{region}",
        "BlockSize": 524288,
        "Status": "pending",
    },  # fmt: skip
    "PutSnapshotBlock": lambda region, p: {"Checksum": p["Checksum"]},
    "CompleteSnapshot": lambda region, p: {"Status": "pending"},
    "RegisterImage": lambda region, p: {"ImageId": f"ami-dry-run-{region}"},
    "CopyImage": lambda region, p: {"ImageId": f"ami-dry-run-{region}"},
    "GetImageBlockPublicAccessState": lambda r, p: {"ImageBlockPublicAccessState": "unblocked"},
    "PutParameter": lambda region, p: {"Version": 1},
}


class Recorder:
    """Records the calls of the clients it is attached to and answers them."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._parameters: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def attach(self, client: Any, service: str, region: str) -> None:
        def record(params: dict[str, Any], model: Any, context: dict[str, Any], **kw: Any) -> None:
            # block data is summarised, never kept: a dry run reads the whole image
            kept = {k: v for k, v in params.items() if k != "BlockData"}
            call = context["hostbuild_call"] = Call(service, region, model.name, kept)
            with self._lock:
                self.calls.append(call)
                if model.name == "PutParameter":
                    self._parameters[region, params["Name"]] = params["Value"]

        def answer(model: Any, context: dict[str, Any], **kw: Any) -> tuple[AWSResponse, Any]:
            call: Call = context["hostbuild_call"]
            if model.name == "GetParameter":
                with self._lock:
                    value = self._parameters.get((region, call.params["Name"]))
                if value is None:
                    error = {"Code": "ParameterNotFound", "Message": "dry run"}
                    return _http(400), {"Error": error}
                return _http(200), {"Parameter": {"Value": value}}
            responder = RESPONSES.get(model.name, _empty)
            return _http(200), responder(region, call.params)

        events = client.meta.events
        events.register_first("before-parameter-build.*.*", record)
        events.register_first("before-call.*.*", answer)

    def calls_of(self, operation: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.operation == operation]

    def describe(self) -> list[dict[str, Any]]:
        """The calls in order; consecutive PutSnapshotBlock calls are summarised as one entry."""
        out: list[dict[str, Any]] = []
        for call in self.calls:
            entry: dict[str, Any] = {
                "service": call.service,
                "region": call.region,
                "operation": call.operation,
            }
            if call.operation == "PutSnapshotBlock":
                last = out[-1] if out else {}
                if last.get("operation") == "PutSnapshotBlock" and last["region"] == call.region:
                    last["count"] += 1
                    last["bytes"] += call.params["DataLength"]
                    last["first_index"] = min(last["first_index"], call.params["BlockIndex"])
                    last["last_index"] = max(last["last_index"], call.params["BlockIndex"])
                    continue
                entry.update(count=1, bytes=call.params["DataLength"],
                             first_index=call.params["BlockIndex"],
                             last_index=call.params["BlockIndex"],
                             SnapshotId=call.params["SnapshotId"])  # fmt: skip
            else:
                entry["params"] = call.params
            out.append(entry)
        return out


def format_calls(calls: list[dict[str, Any]]) -> list[str]:
    """One line per call, as `hostbuild publish ami --dry-run` prints them."""
    lines = []
    for c in calls:
        head = f"{c['service']} {c['region']} {c['operation']}"
        if c["operation"] == "PutSnapshotBlock":
            lines.append(
                f"{head} x{c['count']} SnapshotId={c['SnapshotId']} blocks {c['first_index']}.."
                f"{c['last_index']} ({c['bytes']} bytes; holes and all-zero blocks not sent)"
            )
        else:
            params = dict(c["params"])
            if "UefiData" in params:  # kilobytes of base64: its size says enough here
                params["UefiData"] = f"<{len(params['UefiData'])} base64 characters>"
            lines.append(f"{head} {json.dumps(params, sort_keys=True, default=str)}")
    return lines
