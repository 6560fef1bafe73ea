#!/bin/sh
# Container entrypoint: makes panzer PID 1.
#
# `exec` is the point: panzer replaces this shell, so it is PID 1 itself.
# It then takes the runtime's SIGTERM (docker stop, a pod's termination) as
# a graceful stop, drains the workers and exits 0, and it reaps every
# process re-parented to it. A shell left as PID 1 would do neither.
#
# The arguments are panzer's: options, then the server to run (the
# Dockerfile's CMD: /app/server). Every option also comes from the
# environment (PANZER_COUNT, PANZER_GRACEFUL_TIMEOUT, ...); a platform that
# sets PORT gets that port bound unless PANZER_BIND says otherwise.
set -eu
if [ -z "${PANZER_BIND:-}" ]; then
    PANZER_BIND="0.0.0.0:${PORT:-8080}"
    export PANZER_BIND
fi
exec panzer "$@"
