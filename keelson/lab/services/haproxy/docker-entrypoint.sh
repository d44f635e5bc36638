#!/bin/sh
# Entrypoint of the lab's HAProxy image, as upstream's: `haproxy ARGS` runs in
# master-worker mode (-W) in the foreground (-db).
set -eu

if [ "${1#-}" != "${1:-}" ]; then
	set -- haproxy "$@"
fi
if [ "${1:-}" = haproxy ]; then
	shift
	set -- haproxy -W -db "$@"
fi
exec "$@"
