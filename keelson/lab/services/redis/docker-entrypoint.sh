#!/bin/sh
# Entrypoint of the lab's Redis image, after the official redis image's:
# `redis-server [conf] [--opt val...]`; started as root it drops to redis
# (uid 999), started as `user: 999:999` it runs as that user.
set -eu

# `docker run IMAGE --port 7000` or `docker run IMAGE /etc/redis.conf`
if [ "${1#-}" != "${1:-}" ] || [ "${1%.conf}" != "${1:-}" ]; then
	set -- redis-server "$@"
fi

if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
	find . \! -user redis -exec chown redis '{}' +
	exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"
fi

if [ "${1:-}" = redis-server ]; then
	# The official image builds Redis with protected mode off by default
	# (the container's network is the boundary); keep that unless asked.
	conf=
	case ${2:-} in -* | "") ;; *) conf=$2 ;; esac
	if ! printf '%s\n' "$@" | grep -q -- '--protected-mode' &&
		{ [ -z "$conf" ] || ! grep -qs '^[[:space:]]*protected-mode' "$conf"; }; then
		set -- "$@" --protected-mode no
	fi
fi

# Keep data files private unless the caller chose a umask.
if [ "$(umask)" = 0022 ]; then
	umask 0077
fi

exec "$@"
