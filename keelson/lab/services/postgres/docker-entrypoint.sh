#!/usr/bin/env bash
# Entrypoint of the lab's PostgreSQL image: the part of the official image's
# docker-entrypoint.sh that Keelson's roles rely on.
#   POSTGRES_USER (default postgres), POSTGRES_DB (default $POSTGRES_USER),
#   POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (also *_FILE for USER and DB),
#   POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256).
# On an empty $PGDATA: initdb, run /docker-entrypoint-initdb.d/*.sql|*.sql.gz|*.sh
# once, then exec postgres with the arguments given (`postgres -c key=value`).
# Started as root it drops to postgres (uid 999); started as `user: 999:999` it
# runs as that user.
set -Eeuo pipefail

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE.
file_env() {
	local var=$1 def=${2:-} fvar="${1}_FILE" val
	if [[ -n ${!var:-} && -n ${!fvar:-} ]]; then
		echo >&2 "error: both $var and $fvar are set (but are exclusive)"
		exit 1
	fi
	val=$def
	if [[ -n ${!var:-} ]]; then
		val=${!var}
	elif [[ -n ${!fvar:-} ]]; then
		val=$(<"${!fvar}")
	fi
	export "$var"="$val"
	unset "$fvar"
}

want_help() {
	local arg
	for arg; do
		case $arg in
		-'?' | --help | --describe-config | -V | --version) return 0 ;;
		esac
	done
	return 1
}

init_database() {
	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	local auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	if [[ -z $POSTGRES_PASSWORD && $auth != trust ]]; then
		echo >&2 "error: database is uninitialized and no superuser password is set:"
		echo >&2 "       set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE (or POSTGRES_HOST_AUTH_METHOD=trust)"
		exit 1
	fi

	# POSTGRES_INITDB_ARGS is word-split on purpose, like the official image;
	# the password goes through a pipe, never the command line.
	# shellcheck disable=SC2086
	if [[ -n $POSTGRES_PASSWORD ]]; then
		initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") $POSTGRES_INITDB_ARGS
	else
		initdb --username="$POSTGRES_USER" $POSTGRES_INITDB_ARGS
	fi
	printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
	# These binaries default to /tmp; the official image's to /var/run/postgresql.
	sed -ri "s!^#?(unix_socket_directories)\s*=\s*\S+.*!\1 = '/var/run/postgresql'!" "$PGDATA/postgresql.conf"

	export PGPASSWORD=$POSTGRES_PASSWORD
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
	local -a psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
	if [[ $POSTGRES_DB != postgres ]]; then
		"${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<-'SQL'
			CREATE DATABASE :"db" ;
		SQL
	fi
	local f
	for f in /docker-entrypoint-initdb.d/*; do
		case $f in
		*.sh)
			if [[ -x $f ]]; then
				echo "$0: running $f"
				"$f"
			else
				echo "$0: sourcing $f"
				# shellcheck disable=SC1090
				. "$f"
			fi
			;;
		*.sql)
			echo "$0: running $f"
			"${psql[@]}" --dbname "$POSTGRES_DB" -f "$f"
			;;
		*.sql.gz)
			echo "$0: running $f"
			gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB"
			;;
		*/\*) ;; # empty directory
		*) echo "$0: ignoring $f" ;;
		esac
	done
	pg_ctl -D "$PGDATA" -m fast -w stop
	unset PGPASSWORD
	echo "PostgreSQL init process complete; ready for start up."
}

if [[ ${1:-} == -* ]]; then
	set -- postgres "$@"
fi

if [[ ${1:-} == postgres ]] && ! want_help "$@"; then
	if [[ $(id -u) == 0 ]]; then
		install -d -o postgres -g postgres -m 0700 "$PGDATA"
		find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
		install -d -o postgres -g postgres -m 3777 /var/run/postgresql
		exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
	fi
	mkdir -p "$PGDATA"
	chmod 0700 "$PGDATA" 2>/dev/null || :
	if [[ ! -s $PGDATA/PG_VERSION ]]; then
		init_database
	fi
fi

exec "$@"
