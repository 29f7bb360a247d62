#!/bin/sh
# Entry point of deploy/compose.yaml's `consumer` service (`docker compose up --scale consumer=N`); runs its
# command (`depin run --parts consume,api`) once it holds a slot.
# Replicas of one compose service share one environment, but deploy/mosquitto.conf keys every broker
# session by username (use_username_as_clientid), so each consumer needs an account of its own: the
# replica takes the first free slot 1..CONSUMER_SLOTS (the accounts init.sh made) by holding an flock on
# /slots/N.lock for as long as `depin run` lives (the lock's descriptor is inherited through exec; a
# crashed container releases it). A restarted replica takes the lowest free slot, so usually its old
# account and with it its persistent session and the messages queued on it.
set -eu
STATE="${STATE_DIR:-/state}"  # the volumes; other directories for a run outside a container (the tests)
SLOTS="${SLOTS_DIR:-/slots}"
i=1
while [ "$i" -le "$CONSUMER_SLOTS" ]; do
  exec 9> "$SLOTS/$i.lock"
  if flock --nonblock 9; then
    export DEPIN_MQTT_USERNAME="depin-ingest-$i"
    export DEPIN_MQTT_CLIENT_ID="depin-ingest-$i"
    export DEPIN_MQTT_PASSWORD_FILE="$STATE/mqtt/depin-ingest-$i.pass"
    echo "consumer: slot $i (broker account depin-ingest-$i)"
    exec "$@"
  fi
  i=$((i + 1))
done
echo "consumer: all $CONSUMER_SLOTS slots are taken: raise CONSUMER_SLOTS (and re-run init) to scale further" >&2
exit 1
