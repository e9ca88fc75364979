#!/usr/bin/env bash
# Services the tests need: a Mosquitto MQTT broker on 127.0.0.1:${MQTT_PORT:-1883}.
# Idempotent: installs mosquitto if missing, starts it in the background only if the
# port does not answer yet, and returns once it answers.
set -euo pipefail

PORT="${MQTT_PORT:-1883}"
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if port_answers; then
    echo "services: MQTT broker already answers on 127.0.0.1:$PORT"
    exit 0
fi

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    echo "services: installing mosquitto"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
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
