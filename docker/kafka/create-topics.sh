#!/usr/bin/env bash
# Create clipguard's topics on Apache Kafka, once, before the workers start (the compose
# stack's `topics` service runs it in the Kafka image). Safe to run again: existing topics are
# kept, and a topic with fewer partitions than asked for is grown (never shrunk: Kafka cannot).
#
#   BOOTSTRAP            broker to talk to                        (default kafka:9092)
#   SEGMENT_PARTITIONS   partitions of clipguard.segments and of   (default 4)
#                        clipguard.state: the most workers that
#                        can consume at once
#   TOPIC_PARTITIONS     partitions of every other topic           (default 1)
#   MAX_MESSAGE_BYTES    largest record on segments and dlq        (default 20971520, 20 MiB)
#   SEGMENT_RETENTION_MS how long input segments are kept          (default 86400000, 1 day)
#   COMMAND_CONFIG       client properties for a secured broker     (default none: PLAINTEXT;
#                        (SASL), as sasl-setup.sh passes them        see compose.sasl.yaml)
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
SEGMENT_PARTITIONS="${SEGMENT_PARTITIONS:-4}"
TOPIC_PARTITIONS="${TOPIC_PARTITIONS:-1}"
MAX_MESSAGE_BYTES="${MAX_MESSAGE_BYTES:-20971520}"
SEGMENT_RETENTION_MS="${SEGMENT_RETENTION_MS:-86400000}"
KAFKA_TOPICS="${KAFKA_TOPICS:-/opt/kafka/bin/kafka-topics.sh}"
COMMAND_CONFIG="${COMMAND_CONFIG:-}"

for count in "$SEGMENT_PARTITIONS" "$TOPIC_PARTITIONS"; do
    if ! [[ "$count" =~ ^[1-9][0-9]*$ ]]; then
        echo "create-topics: partition counts must be whole numbers >= 1, not '$count'" >&2
        exit 2
    fi
done

topics() {
    "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" ${COMMAND_CONFIG:+--command-config "$COMMAND_CONFIG"} "$@"
}

partition_count() {
    topics --describe --topic "$1" | sed -n 's/.*PartitionCount: *\([0-9][0-9]*\).*/\1/p' | head -n 1
}

# ensure NAME PARTITIONS [--config KEY=VALUE ...]
ensure() {
    local name="$1" want="$2" have
    shift 2
    topics --create --if-not-exists --topic "$name" --partitions "$want" \
        --replication-factor 1 "$@"
    have="$(partition_count "$name")"
    if [[ -z "$have" ]]; then
        echo "create-topics: cannot read the partition count of $name" >&2
        exit 1
    fi
    if ((have < want)); then
        echo "create-topics: $name: $have -> $want partitions (keys move to new partitions)"
        topics --alter --topic "$name" --partitions "$want"
    elif ((have > want)); then
        echo "create-topics: $name keeps its $have partitions (asked for $want; Kafka cannot shrink a topic)"
    fi
    echo "create-topics: $name ready ($(partition_count "$name") partitions)"
}

ensure clipguard.segments "$SEGMENT_PARTITIONS" \
    --config "max.message.bytes=$MAX_MESSAGE_BYTES" \
    --config "retention.ms=$SEGMENT_RETENTION_MS"
# a stream's temporal state sits in the same partition number as its segments
ensure clipguard.state "$(partition_count clipguard.segments)" --config cleanup.policy=compact
ensure clipguard.scores "$TOPIC_PARTITIONS"
ensure clipguard.flags "$TOPIC_PARTITIONS"
ensure clipguard.dlq "$TOPIC_PARTITIONS" --config "max.message.bytes=$MAX_MESSAGE_BYTES"
ensure clipguard.jobs "$TOPIC_PARTITIONS"
ensure clipguard.job-status "$TOPIC_PARTITIONS"
ensure clipguard.embeddings "$TOPIC_PARTITIONS" --config "max.message.bytes=$MAX_MESSAGE_BYTES"

segments="$(partition_count clipguard.segments)"
state="$(partition_count clipguard.state)"
if [[ "$segments" != "$state" ]]; then
    echo "create-topics: clipguard.state has $state partitions but clipguard.segments has" \
        "$segments: they must match (recreate clipguard.state)" >&2
    exit 1
fi
