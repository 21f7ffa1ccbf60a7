"""Wire protocol v1: every JSON message racks, tools and the controller exchange over MQTT.

The simulator's agents, the node agent and the daemon all use this package (and from the daemon's
side, only it), so the two ends cannot drift apart. One module per message kind, one set of
validators, one table of topics:

- `topics`: every topic, its direction, QoS and retention (`TOPICS`), and the topic builders;
- `protocol`: version, size limits, physical ranges, id rules, command reject reasons, backoff;
- `checks`: the validators every decoder uses (safe integers, finite numbers in range, bounded
  strings), raising the reason a refusal is counted under;
- `telemetry` (rack readings), `node` (one server's readings), `command` (rack caps, and the
  agents' ordering rule), `node_command` (a node's part of one), `status` (controller liveness),
  `meter` (facility meter), `grid_signal` (carbon or price forecast), `jobs` (scheduler's job
  reports), `grid_event` (demand-response events), `rejections` (refusal counts by kind).

Decoders validate everything a sender could get wrong and raise `TelemetryError` (telemetry) or
`ProtocolError` (everything else) with the reason it is counted under; callers never see a
half-valid message. Order comes from counters, never from clocks.
"""

from controller.wire.checks import is_id, is_number, is_safe_int
from controller.wire.command import (
    Command,
    HeldCommand,
    accept_command,
    decode_command,
    encode_command,
    encode_commands,
    round_safe_caps,
)
from controller.wire.grid_event import (
    MAX_EVENT_SECONDS,
    MAX_LIMIT_KW,
    MAX_MODIFICATION,
    MAX_UNIX_S,
    Cancel,
    EventMessage,
    GridEvent,
    decode_grid_event,
    unix_seconds,
)
from controller.wire.grid_signal import (
    MAX_FORECAST_SLOTS,
    SignalMessage,
    decode_signal,
    encode_signal,
)
from controller.wire.jobs import (
    JOB_ID_CHARS,
    MAX_JOB_RANGES,
    GpuRange,
    JobReport,
    decode_job,
    encode_job,
    is_job_id,
)
from controller.wire.meter import (
    FACILITY_RANGE_W,
    OUTDOOR_RANGE_C,
    MeterReading,
    decode_meter,
    encode_meter,
)
from controller.wire.node import (
    MAX_GPU_STRING_CHARS,
    MAX_HOSTNAME_CHARS,
    MAX_NODE_GPUS,
    MAX_NODE_PAYLOAD_BYTES,
    NODE_EXTRA_RANGES,
    NODE_POWER_RANGE_W,
    NodeTelemetry,
    decode_node_telemetry,
    encode_node_telemetry,
)
from controller.wire.node_command import (
    CommandRejectedError,
    NodeCommand,
    decode_node_command,
    encode_node_command,
)
from controller.wire.protocol import (
    COMMAND_REJECT_REASONS,
    GPU_FIELD_RANGES,
    ID_CHARS,
    ID_PATTERN,
    MAX_CLASS_NAME_CHARS,
    MAX_ID_CHARS,
    MAX_MESSAGE_CLASSES,
    MAX_PAYLOAD_BYTES,
    MAX_RACK_ID_CHARS,
    MAX_SAFE_INT,
    MAX_TTL_S,
    PROTOCOL_VERSION,
    RACK_POWER_RANGE_W,
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    TOPIC_ROOT,
    TS_RANGE_S,
    FloatArray,
    reconnect_delay_s,
)
from controller.wire.rejections import MessageRejections
from controller.wire.status import Status, decode_status, encode_status
from controller.wire.telemetry import Telemetry, decode_telemetry, encode_telemetry
from controller.wire.topics import (
    TOPICS,
    Topic,
    command_filter,
    command_topic,
    facility_topic,
    grid_event_filters,
    grid_event_topic,
    grid_response_topic,
    job_topic,
    jobs_filter,
    jobs_prefix,
    node_command_topic,
    node_telemetry_filter,
    node_telemetry_topic,
    rack_from_topic,
    signal_topic,
    status_topic,
    telemetry_filter,
    telemetry_topic,
)

__all__ = [
    "COMMAND_REJECT_REASONS",
    "FACILITY_RANGE_W",
    "GPU_FIELD_RANGES",
    "ID_CHARS",
    "ID_PATTERN",
    "JOB_ID_CHARS",
    "MAX_CLASS_NAME_CHARS",
    "MAX_EVENT_SECONDS",
    "MAX_FORECAST_SLOTS",
    "MAX_GPU_STRING_CHARS",
    "MAX_HOSTNAME_CHARS",
    "MAX_ID_CHARS",
    "MAX_JOB_RANGES",
    "MAX_LIMIT_KW",
    "MAX_MESSAGE_CLASSES",
    "MAX_MODIFICATION",
    "MAX_NODE_GPUS",
    "MAX_NODE_PAYLOAD_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_RACK_ID_CHARS",
    "MAX_SAFE_INT",
    "MAX_TTL_S",
    "MAX_UNIX_S",
    "NODE_EXTRA_RANGES",
    "NODE_POWER_RANGE_W",
    "OUTDOOR_RANGE_C",
    "PROTOCOL_VERSION",
    "RACK_POWER_RANGE_W",
    "RECONNECT_FIRST_S",
    "RECONNECT_MAX_S",
    "TOPICS",
    "TOPIC_ROOT",
    "TS_RANGE_S",
    "Cancel",
    "Command",
    "CommandRejectedError",
    "EventMessage",
    "FloatArray",
    "GpuRange",
    "GridEvent",
    "HeldCommand",
    "JobReport",
    "MessageRejections",
    "MeterReading",
    "NodeCommand",
    "NodeTelemetry",
    "SignalMessage",
    "Status",
    "Telemetry",
    "Topic",
    "accept_command",
    "command_filter",
    "command_topic",
    "decode_command",
    "decode_grid_event",
    "decode_job",
    "decode_meter",
    "decode_node_command",
    "decode_node_telemetry",
    "decode_signal",
    "decode_status",
    "decode_telemetry",
    "encode_command",
    "encode_commands",
    "encode_job",
    "encode_meter",
    "encode_node_command",
    "encode_node_telemetry",
    "encode_signal",
    "encode_status",
    "encode_telemetry",
    "facility_topic",
    "grid_event_filters",
    "grid_event_topic",
    "grid_response_topic",
    "is_id",
    "is_job_id",
    "is_number",
    "is_safe_int",
    "job_topic",
    "jobs_filter",
    "jobs_prefix",
    "node_command_topic",
    "node_telemetry_filter",
    "node_telemetry_topic",
    "rack_from_topic",
    "reconnect_delay_s",
    "round_safe_caps",
    "signal_topic",
    "status_topic",
    "telemetry_filter",
    "telemetry_topic",
    "unix_seconds",
]
