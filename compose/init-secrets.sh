#!/bin/sh
# Generate the secrets of the compose stack once:
# * compose/.nats.env (mode 0600): HALO_NATS_USER / HALO_NATS_PASSWORD. compose.yaml hands the file to
#   nats-server (whose config, compose/nats/halo-nats.conf, requires these credentials) and to every Halo
#   service, so nothing without them can talk to the services over NATS;
# * compose/.gateway.env (mode 0600): HALO_GATEWAY_TOKEN, the bearer token the gateway requires (it binds
#   0.0.0.0 in its container, which always means token auth). Clients send it as HALO_TOKEN.
#
#   compose/init-secrets.sh            # before the first `docker compose up`; later runs keep the file
#
# HALO_NATS_ENV_FILE / HALO_GATEWAY_ENV_FILE override where the files are written (tests).
set -eu
dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
out=${HALO_NATS_ENV_FILE:-$dir/.nats.env}
gateway_out=${HALO_GATEWAY_ENV_FILE:-$dir/.gateway.env}
umask 077

random40() {
    value=$(LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 40)
    if [ "${#value}" -ne 40 ]; then
        echo "init-secrets: could not read random bytes from /dev/urandom" >&2
        exit 1
    fi
    printf '%s' "$value"
}

write_once() {  # write_once FILE CONTENT DESCRIPTION: atomically, 0600, only when FILE is absent or empty
    if [ -s "$1" ]; then
        echo "$1 exists; keeping the $3 in it"
        return 0
    fi
    tmp="$1.tmp.$$"
    printf '%s' "$2" > "$tmp"
    chmod 600 "$tmp"
    mv "$tmp" "$1"
    echo "wrote $1 (mode 0600): $3 for the compose stack"
}

write_once "$out" "$(printf 'HALO_NATS_USER=halo\nHALO_NATS_PASSWORD=%s\n' "$(random40)")" "NATS credentials"
write_once "$gateway_out" "$(printf 'HALO_GATEWAY_TOKEN=hfk_%s\n' "$(random40)")" "gateway token"
