#!/bin/sh
# Generate the NATS credentials of the compose stack once: compose/.nats.env (mode 0600) with
# HALO_NATS_USER / HALO_NATS_PASSWORD. compose.yaml hands the file to nats-server (whose config,
# compose/nats/halo-nats.conf, requires these credentials) and to every Halo service, so nothing
# without them can talk to the services over NATS.
#
#   compose/init-secrets.sh            # before the first `docker compose up`; later runs keep the file
#
# HALO_NATS_ENV_FILE overrides where the file is written (tests).
set -eu
dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
out=${HALO_NATS_ENV_FILE:-$dir/.nats.env}
if [ -s "$out" ]; then
    echo "$out exists; keeping the credentials in it"
    exit 0
fi
umask 077
password=$(LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom | head -c 40)
if [ "${#password}" -ne 40 ]; then
    echo "init-secrets: could not read random bytes from /dev/urandom" >&2
    exit 1
fi
tmp="$out.tmp.$$"
printf 'HALO_NATS_USER=halo\nHALO_NATS_PASSWORD=%s\n' "$password" > "$tmp"
chmod 600 "$tmp"
mv "$tmp" "$out"
echo "wrote $out (mode 0600): NATS credentials for the compose stack"
