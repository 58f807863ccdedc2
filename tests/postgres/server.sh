#!/bin/sh
# Starts, once, a private PostgreSQL server for the tests: Debian's
# postgresql binaries, a cluster in a temporary directory, listening on
# loopback only, trust authentication (nothing but this machine's tests
# can reach it). Later calls find it running. Prints its base URL, to
# which a test appends a database name of its own.
#
#   CONSOLEGATE_TEST_PG_PORT  port (default 54329)
#   CONSOLEGATE_TEST_PG_DIR   cluster directory (default $TMPDIR/consolegate-test-postgres)
set -eu
port=${CONSOLEGATE_TEST_PG_PORT:-54329}
dir=${CONSOLEGATE_TEST_PG_DIR:-${TMPDIR:-/tmp}/consolegate-test-postgres}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
    echo "no PostgreSQL server binaries under /usr/lib/postgresql: apt-get install postgresql" >&2
    exit 1
fi
# PostgreSQL refuses to run as root: run it as the package's postgres user.
as_owner() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
exec 9>"$dir.lock"
flock 9
if ! as_owner "$bin/pg_ctl" status -D "$dir/data" >/dev/null 2>&1; then
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$dir/data" -U consolegate --auth=trust \
            --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    # The server must not inherit the lock (fd 9), or it would hold it forever.
    as_owner "$bin/pg_ctl" start -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=300" \
        >/dev/null 9>&- || { cat "$dir/server.log" >&2; exit 1; }
fi
echo "postgres://consolegate@127.0.0.1:$port"
