"""Listens to emogate's `ros2:` output with Eclipse Cyclone DDS (an
independent DDS implementation) and writes what it decoded as JSON.

Usage: ros2_listen.py DOMAIN_ID SECONDS OUT.json

Subscribes to the ROS 2 wire names and types, with the QoS emogate
documents (reliable, volatile, keep-last 10):
  rt/emogate/expression  hri_msgs::msg::dds_::Expression_
  rt/diagnostics         diagnostic_msgs::msg::dds_::DiagnosticArray_
  rt/emogate/events      std_msgs::msg::dds_::String_
and asks for the status on rt/emogate/control (std_msgs/String JSON) about
once a second until a reply arrives on rt/emogate/control/reply.
Cyclone decodes the CDR samples into the IDL structs below (field order of
the .msg files). Discovery stays on the loopback interface: the caller sets
CYCLONEDDS_URI. Prints "READY" once the readers exist, then collects for
SECONDS and exits.
"""

import json
import math
import sys
import time
from dataclasses import dataclass
from typing import List

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl.types import float32, int32, sequence, uint8, uint32
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration


@dataclass
class Time(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: int32
    nanosec: uint32


@dataclass
class Header(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time
    frame_id: str


@dataclass
class Expression(IdlStruct, typename="hri_msgs::msg::dds_::Expression_"):
    header: Header
    expression: str
    valence: float32
    arousal: float32
    confidence: float32


@dataclass
class IdsList(IdlStruct, typename="hri_msgs::msg::dds_::IdsList_"):
    header: Header
    ids: sequence[str]


@dataclass
class KeyValue(IdlStruct, typename="diagnostic_msgs::msg::dds_::KeyValue_"):
    key: str
    value: str


@dataclass
class DiagnosticStatus(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticStatus_"):
    level: uint8
    name: str
    message: str
    hardware_id: str
    values: sequence[KeyValue]


@dataclass
class DiagnosticArray(IdlStruct, typename="diagnostic_msgs::msg::dds_::DiagnosticArray_"):
    header: Header
    status: sequence[DiagnosticStatus]


@dataclass
class String(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


def num(x):
    """NaN as None (JSON has no NaN)."""
    return None if math.isnan(x) else x


def main():
    domain, seconds, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    qos = Qos(
        Policy.Reliability.Reliable(duration(seconds=1)),
        Policy.Durability.Volatile,
        Policy.History.KeepLast(10),
    )
    dp = DomainParticipant(domain)
    readers = {
        "expression": DataReader(dp, Topic(dp, "rt/emogate/expression", Expression), qos=qos),
        "diagnostics": DataReader(dp, Topic(dp, "rt/diagnostics", DiagnosticArray), qos=qos),
        "events": DataReader(dp, Topic(dp, "rt/emogate/events", String), qos=qos),
        "replies": DataReader(dp, Topic(dp, "rt/emogate/control/reply", String), qos=qos),
        "tracked": DataReader(dp, Topic(dp, "rt/humans/faces/tracked", IdsList), qos=qos),
    }
    # REP-155's per-face topics, for the first ids a run gives.
    for face in ("f1", "f2", "f3"):
        readers["face_" + face] = DataReader(
            dp, Topic(dp, f"rt/humans/faces/{face}/expression", Expression), qos=qos
        )
    control = DataWriter(dp, Topic(dp, "rt/emogate/control", String), qos=qos)
    next_request = time.monotonic() + 1.0
    print("READY", flush=True)
    got = {k: [] for k in readers}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not got["replies"] and time.monotonic() >= next_request:
            control.write(String(data='{"cmd": "status"}'))
            next_request = time.monotonic() + 1.0
        idle = True
        for name, reader in readers.items():
            for s in reader.take(N=100):
                if not s.sample_info.valid_data:
                    continue
                idle = False
                if name == "tracked":
                    got[name].append({
                        "sec": s.header.stamp.sec,
                        "nanosec": s.header.stamp.nanosec,
                        "ids": list(s.ids),
                    })
                elif name == "expression" or name.startswith("face_"):
                    got[name].append({
                        "sec": s.header.stamp.sec,
                        "nanosec": s.header.stamp.nanosec,
                        "frame_id": s.header.frame_id,
                        "expression": s.expression,
                        "valence": num(s.valence),
                        "arousal": num(s.arousal),
                        "confidence": num(s.confidence),
                    })
                elif name == "diagnostics":
                    got[name].append({
                        "sec": s.header.stamp.sec,
                        "frame_id": s.header.frame_id,
                        "status": [
                            {
                                "level": st.level,
                                "name": st.name,
                                "message": st.message,
                                "hardware_id": st.hardware_id,
                                "values": {kv.key: kv.value for kv in st.values},
                            }
                            for st in s.status
                        ],
                    })
                else:
                    got[name].append(s.data)
        if idle:
            time.sleep(0.02)
    with open(out, "w") as f:
        json.dump(got, f)
    print("DONE", {k: len(v) for k, v in got.items()}, flush=True)


if __name__ == "__main__":
    main()
