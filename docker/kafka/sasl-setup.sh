#!/usr/bin/env bash
# One-shot set-up of the SASL broker of docker/compose.sasl.yaml, as its admin: clipguard's
# topics (create-topics.sh), a SCRAM-SHA-512 credential for each client principal (its password
# from a file), and the ACLs that give each principal what it needs and nothing else. Safe to run
# again: topics are kept, credentials are set to the files' passwords, ACLs are added once.
#
#   principal            may
#   clipguard-worker     read clipguard.segments and clipguard.jobs; read and write
#                        clipguard.state (its own temporal-state checkpoints); write
#                        clipguard.scores, .flags, .dlq, .job-status and .embeddings; join the
#                        consumer groups named clipguard-workers* (segments, and -jobs)
#   clipguard-producer   write clipguard.segments (the ingest edge)
#
#   BOOTSTRAP                 broker to talk to           (default kafka:9092)
#   ADMIN_USER                the admin's name            (default admin)
#   ADMIN_PASSWORD_FILE       (default /run/secrets/kafka_admin_password)
#   WORKER_PASSWORD_FILE      (default /run/secrets/kafka_worker_password)
#   PRODUCER_PASSWORD_FILE    (default /run/secrets/kafka_producer_password)
#   WORKER_GROUP              the workers' consumer group (default clipguard-workers)
#   CONFIG_DIR                private scratch folder      (default /tmp/clipguard-admin)
#   KAFKA_BIN                 Kafka's tools               (default /opt/kafka/bin)
# and create-topics.sh's variables (SEGMENT_PARTITIONS, TOPIC_PARTITIONS, MAX_MESSAGE_BYTES).
set -euo pipefail

BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
ADMIN_USER="${ADMIN_USER:-admin}"
ADMIN_PASSWORD_FILE="${ADMIN_PASSWORD_FILE:-/run/secrets/kafka_admin_password}"
WORKER_PASSWORD_FILE="${WORKER_PASSWORD_FILE:-/run/secrets/kafka_worker_password}"
PRODUCER_PASSWORD_FILE="${PRODUCER_PASSWORD_FILE:-/run/secrets/kafka_producer_password}"
WORKER_GROUP="${WORKER_GROUP:-clipguard-workers}"
CONFIG_DIR="${CONFIG_DIR:-/tmp/clipguard-admin}"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

WORKER=clipguard-worker
PRODUCER=clipguard-producer

die() {
    echo "sasl-setup: $*" >&2
    exit 2
}

# read_secret FILE: the password in FILE, checked (docker/kafka/secret.sh)
# shellcheck source-path=SCRIPTDIR source=secret.sh
. "$HERE/secret.sh"

[[ "$WORKER_GROUP" =~ ^[A-Za-z0-9._-]+$ ]] || die "WORKER_GROUP: letters, digits and . _ - only"
umask 077
mkdir -p "$CONFIG_DIR"
admin="$CONFIG_DIR/admin.properties"
{
    echo "security.protocol=SASL_PLAINTEXT"
    echo "sasl.mechanism=SCRAM-SHA-512"
    printf 'sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="%s" password="%s";\n' \
        "$ADMIN_USER" "$(read_secret "$ADMIN_PASSWORD_FILE")"
} >"$admin"

# 1. the topics, as the plain stack creates them
COMMAND_CONFIG="$admin" KAFKA_TOPICS="$KAFKA_BIN/kafka-topics.sh" BOOTSTRAP="$BOOTSTRAP" \
    bash "$HERE/create-topics.sh"

# 2. a SCRAM credential per principal; the password goes in a file, not on a command line
credential() {
    local user="$1" file="$2" props="$CONFIG_DIR/$1.scram"
    printf 'SCRAM-SHA-512=[iterations=8192,password=%s]\n' "$(read_secret "$file")" >"$props"
    "$KAFKA_BIN/kafka-configs.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$admin" \
        --alter --entity-type users --entity-name "$user" --add-config-file "$props"
    rm -f "$props"
    echo "sasl-setup: SCRAM-SHA-512 credential of $user set"
}
credential "$WORKER" "$WORKER_PASSWORD_FILE"
credential "$PRODUCER" "$PRODUCER_PASSWORD_FILE"

# 3. ACLs: allow PRINCIPAL OPERATIONS... -- RESOURCE ARGS...
allow() {
    local principal="$1" ops=()
    shift
    while [[ "$1" != "--" ]]; do
        ops+=(--operation "$1")
        shift
    done
    shift
    "$KAFKA_BIN/kafka-acls.sh" --bootstrap-server "$BOOTSTRAP" --command-config "$admin" \
        --add --allow-principal "User:$principal" "${ops[@]}" "$@"
}
allow "$WORKER" Read Describe -- --topic clipguard.segments
allow "$WORKER" Read Describe -- --topic clipguard.jobs
allow "$WORKER" Read Write Describe -- --topic clipguard.state
for topic in clipguard.scores clipguard.flags clipguard.dlq clipguard.job-status \
    clipguard.embeddings; do
    allow "$WORKER" Write Describe -- --topic "$topic"
done
allow "$WORKER" Read Describe -- --group "$WORKER_GROUP" --resource-pattern-type prefixed
allow "$PRODUCER" Write Describe -- --topic clipguard.segments

echo "sasl-setup: topics, credentials and ACLs ready"
