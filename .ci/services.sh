#!/usr/bin/env bash
# What the tests need beyond pip: the Debian packages in .ci/apt-packages.txt, and a Mosquitto
# MQTT broker on 127.0.0.1:${MQTT_PORT:-1883}. Idempotent: installs only what is missing,
# starts the broker in the background only if the port does not answer yet, and returns once
# it answers.
set -euo pipefail

# Debian packages the tests need (systemd-analyze, a browser for the kiosk test, the broker).
packages=$(grep -v '^#' "$(dirname "$0")/apt-packages.txt" | tr '\n' ' ')
missing=$(for p in $packages mosquitto; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
    echo "services: installing" $missing
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PORT="${MQTT_PORT:-1883}"
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if port_answers; then
    echo "services: MQTT broker already answers on 127.0.0.1:$PORT"
    exit 0
fi

MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

if ! port_answers; then  # (a package install may have started one already)
    conf="${TMPDIR:-/tmp}/edge-retrieval-mosquitto-$PORT.conf"
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest none\n' "$PORT" > "$conf"
    chmod 644 "$conf"
    "$MOSQUITTO" -c "$conf" -d
fi

for _ in $(seq 100); do
    if port_answers; then
        echo "services: mosquitto answers on 127.0.0.1:$PORT"
        exit 0
    fi
    sleep 0.1
done
echo "services: mosquitto did not answer on 127.0.0.1:$PORT within 10 s" >&2
exit 1
