#!/usr/bin/env bash
# Start Apache Kafka (KRaft, one node) with SASL/SCRAM on its client listeners and ACLs on:
# the broker of docker/compose.sasl.yaml. Passwords come from files (Docker secrets), never from
# the environment; the broker's configuration, which holds them, is written to a private file in
# /tmp (a tmpfs in the compose file) and passed to Kafka.
#
#   listeners      INTERNAL kafka:9092 and EXTERNAL :19092 (host producers): SASL_PLAINTEXT,
#                  SCRAM-SHA-512; CONTROLLER 127.0.0.1:9093: SASL_PLAINTEXT, PLAIN (KRaft
#                  controllers cannot use SCRAM: its credentials live in the metadata they serve)
#   authorizer     StandardAuthorizer; nothing is allowed without an ACL; super users: the admin
#                  (inter-broker, topic and ACL set-up) and the controller
#
#   ADMIN_PASSWORD_FILE       the admin's password        (default /run/secrets/kafka_admin_password)
#   CONTROLLER_PASSWORD_FILE  the controller's password   (default /run/secrets/kafka_controller_password)
#   ADMIN_USER                the admin's name            (default admin)
#   CLUSTER_ID                KRaft cluster id            (required)
#   EXTERNAL_HOST             host name advertised on 19092 (default localhost)
#   MAX_MESSAGE_BYTES         largest record              (default 20971520, 20 MiB)
#   CONFIG_DIR                where the configuration goes (default /tmp/kafka)
#   KAFKA_HOME                Kafka's installation        (default /opt/kafka)
#
# The admin's SCRAM credential is written into the metadata when the data folder is formatted,
# on first start; the workers' and producers' are added by sasl-setup.sh. A data folder formatted
# without SASL (the plain stack's volume) has no admin credential: give this stack its own.
set -euo pipefail

ADMIN_PASSWORD_FILE="${ADMIN_PASSWORD_FILE:-/run/secrets/kafka_admin_password}"
CONTROLLER_PASSWORD_FILE="${CONTROLLER_PASSWORD_FILE:-/run/secrets/kafka_controller_password}"
ADMIN_USER="${ADMIN_USER:-admin}"
EXTERNAL_HOST="${EXTERNAL_HOST:-localhost}"
MAX_MESSAGE_BYTES="${MAX_MESSAGE_BYTES:-20971520}"
CONFIG_DIR="${CONFIG_DIR:-/tmp/kafka}"
KAFKA_HOME="${KAFKA_HOME:-/opt/kafka}"
DATA_DIR="${DATA_DIR:-/var/lib/kafka/data}"

die() {
    echo "sasl-broker: $*" >&2
    exit 2
}

# read_secret FILE: the password in FILE, checked (docker/kafka/secret.sh)
# shellcheck source-path=SCRIPTDIR source=secret.sh
. "$(dirname "${BASH_SOURCE[0]}")/secret.sh"

[[ -n "${CLUSTER_ID:-}" ]] || die "CLUSTER_ID is not set"
[[ "$ADMIN_USER" =~ ^[A-Za-z0-9._-]+$ ]] || die "ADMIN_USER: letters, digits and . _ - only"
[[ "$MAX_MESSAGE_BYTES" =~ ^[1-9][0-9]*$ ]] || die "MAX_MESSAGE_BYTES must be a whole number"
admin_password="$(read_secret "$ADMIN_PASSWORD_FILE")"
controller_password="$(read_secret "$CONTROLLER_PASSWORD_FILE")"

umask 077
mkdir -p "$CONFIG_DIR"
config="$CONFIG_DIR/server.properties"
scram="org.apache.kafka.common.security.scram.ScramLoginModule required"
plain="org.apache.kafka.common.security.plain.PlainLoginModule required"
cat >"$config" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:9093
listeners=INTERNAL://:9092,EXTERNAL://:19092,CONTROLLER://127.0.0.1:9093
advertised.listeners=INTERNAL://kafka:9092,EXTERNAL://${EXTERNAL_HOST}:19092
listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,EXTERNAL:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.internal.scram-sha-512.sasl.jaas.config=${scram} username="${ADMIN_USER}" password="${admin_password}";
listener.name.external.scram-sha-512.sasl.jaas.config=${scram};
listener.name.controller.sasl.enabled.mechanisms=PLAIN
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.plain.sasl.jaas.config=${plain} username="controller" password="${controller_password}" user_controller="${controller_password}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:${ADMIN_USER};User:controller
log.dirs=${DATA_DIR}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes=${MAX_MESSAGE_BYTES}
replica.fetch.max.bytes=${MAX_MESSAGE_BYTES}
replica.fetch.response.max.bytes=104857600
socket.request.max.bytes=104857600
log.retention.hours=24
EOF

# what the health check and an operator's admin tools connect with (same private folder)
cat >"$CONFIG_DIR/admin.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=${scram} username="${ADMIN_USER}" password="${admin_password}";
EOF

# the admin's credential enters the metadata with the first format (ignored once formatted)
"$KAFKA_HOME/bin/kafka-storage.sh" format --config "$config" --cluster-id "$CLUSTER_ID" \
    --ignore-formatted --add-scram "SCRAM-SHA-512=[name=${ADMIN_USER},password=${admin_password}]"
unset admin_password controller_password

export LOG_DIR="${LOG_DIR:-$CONFIG_DIR/logs}" # Kafka's own logs: the root file system is read-only
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$config"
