#!/bin/sh
# Entrypoint of every Halo Forge image.
#
# The image is built for one service (build arg SERVICE, e.g. trainer-torch), recorded in
# HALO_SERVICE. From it this script derives the other spellings of the same name
# (DESIGN.md §2): module halo_trainer_torch, settings prefix HALO_TRAINER_TORCH_.
#
# Container defaults it applies, unless already set:
#   HALO_<SVC>_METRICS_PORT=9400     fixed, so Prometheus / the HEALTHCHECK know where /metrics is
#                                     (outside containers the default is 0 = a free port)
#   HALO_<SVC>_METRICS_HOST=0.0.0.0   reachable from the scraper (outside containers: 127.0.0.1)
#
# With no arguments it runs `python -m halo_<svc>`; with arguments it runs them instead (so
# `docker run IMAGE python -m halo_<svc>` and `docker run IMAGE bash` both work).
# HALO_ENTRYPOINT_DRY_RUN=1 prints the environment it would set and the command, and exits
# (used by tests/deploy/test_packaging.py).
set -eu

svc="${HALO_SERVICE:?HALO_SERVICE is not set: build the image with --build-arg SERVICE=<service>}"
case "$svc" in
  *[!a-z0-9-]*|-*|"") echo "entrypoint: invalid HALO_SERVICE '$svc' (expected e.g. trainer-torch)" >&2; exit 2 ;;
esac
module="halo_$(printf '%s' "$svc" | tr '-' '_')"
prefix="HALO_$(printf '%s' "$svc" | tr 'a-z-' 'A-Z_')_"

port_var="${prefix}METRICS_PORT"
host_var="${prefix}METRICS_HOST"
eval "port=\${${port_var}:-${HALO_CONTAINER_METRICS_PORT:-9400}}"
eval "host=\${${host_var}:-0.0.0.0}"
export "${port_var}=${port}" "${host_var}=${host}"

if [ "$#" -eq 0 ]; then
  set -- python -m "$module"
fi

if [ "${HALO_ENTRYPOINT_DRY_RUN:-0}" = "1" ]; then
  echo "${port_var}=${port}"
  echo "${host_var}=${host}"
  echo "exec $*"
  exit 0
fi
exec "$@"
