#!/bin/sh
# One-shot set-up of deploy/compose.yaml's stack, run by its `init` service before the broker and the
# service start; idempotent (a re-run keeps every key, password and the deployment). Writes into the
# `state` volume (/state), mode 0600 for secrets:
#   operator.key, rewards.key        the deployer/operator key and the REWARDS_ROLE key; written from
#                                    DEV_OPERATOR_KEY / DEV_REWARDS_KEY (anvil's public dev accounts 0
#                                    and 1, funded on every anvil chain) only when absent: for a real
#                                    chain put your own files in the volume first
#   deployment.json                  `depin contracts deploy` (skipped when present)
#   devices/dev-N.json, devices.csv  SIM_DEVICES dashcams, registered on chain to SIM_OWNER
#   mqtt/depin-ingest-N.pass         one broker account per consumer slot (CONSUMER_SLOTS):
#                                    deploy/mosquitto.conf keys sessions by username, so every consumer
#                                    needs its own (README "Securing the broker")
#   mqtt/broker-admin.pass           the broker admin `depin-admin` (live logins, the attacker service)
#   broker/dynamic-security.json     `depin broker dynsec`: the devices', the consumers' and the admin's logins
set -eu
umask 077
S="${STATE_DIR:-/state}"  # the volume; another directory for a run outside a container (the tests)
mkdir -p "$S/devices" "$S/mqtt" "$S/broker"
[ -f "$S/operator.key" ] || printf '%s\n' "$DEV_OPERATOR_KEY" > "$S/operator.key"
[ -f "$S/rewards.key" ] || printf '%s\n' "$DEV_REWARDS_KEY" > "$S/rewards.key"
export DEPIN_OPERATOR_KEY_FILE="$S/operator.key"

if [ ! -f "$S/deployment.json" ]; then
  depin contracts deploy --out "$S/deployment.json" --rewards-key-file "$S/rewards.key"
fi

i=1
printf 'device_id,pubkey,owner,hw_class,asserted_cell\n' > "$S/devices.csv"
while [ "$i" -le "$SIM_DEVICES" ]; do
  cred="$S/devices/dev-$i.json"
  [ -f "$cred" ] || depin device new --out "$cred" > /dev/null
  python -c 'import json, sys; c = json.load(open(sys.argv[1])); print(",".join([c["device_id"], c["pubkey"], sys.argv[2], "dashcam", ""]))' \
    "$cred" "$SIM_OWNER" >> "$S/devices.csv"
  i=$((i + 1))
done
# Registered ids are skipped: safe to re-run.
depin device register-batch "$S/devices.csv"

i=1
while [ "$i" -le "$CONSUMER_SLOTS" ]; do
  depin broker dynsec --file "$S/broker/dynamic-security.json" \
    --user "depin-ingest-$i" --password-file "$S/mqtt/depin-ingest-$i.pass"
  i=$((i + 1))
done
depin broker dynsec --file "$S/broker/dynamic-security.json" --cred "$S"/devices/dev-*.json
# The broker admin (the plugin's control topic only): `depin broker dynsec --live` and the `attacker`
# service's `depin simulate --register` create logins on the running broker with it.
depin broker dynsec --file "$S/broker/dynamic-security.json" --admin depin-admin \
  --password-file "$S/mqtt/broker-admin.pass"
echo "init: deployment, $SIM_DEVICES devices and $CONSUMER_SLOTS consumer accounts ready in $S"
