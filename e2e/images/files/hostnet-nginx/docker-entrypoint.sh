#!/bin/sh
# Stand-in for the nginx image's entrypoint: when the command starts nginx, run the hook
# scripts in /docker-entrypoint.d/ (this image ships none), then exec the command itself so
# that nginx becomes the container's first process.
set -e
if [ "$1" = "nginx" ] || [ "$1" = "nginx-debug" ]; then
    for hook in /docker-entrypoint.d/*.sh; do
        if [ -x "$hook" ]; then
            "$hook"
        fi
    done
fi
exec "$@"
