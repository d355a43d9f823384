#!/bin/sh
# The part of the official postgres image's entry point the Compose project relies on: on
# first start, a cluster in $PGDATA whose superuser is $POSTGRES_USER with $POSTGRES_PASSWORD
# and a database $POSTGRES_DB; trust on the local socket, scram-sha-256 over the network.
set -eu
if [ "$(id -u)" = 0 ]; then
    install -d -o postgres -g postgres -m 0700 "$PGDATA"
    install -d -o postgres -g postgres -m 2775 /var/run/postgresql
    chown -R postgres:postgres "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
    user=${POSTGRES_USER:-postgres}
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    db=${POSTGRES_DB:-$user}
    if [ "$db" != postgres ]; then
        pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
        createdb --username="$user" "$db"
        pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
    fi
fi
exec "$@"
