#!/usr/bin/env bash
# Brings up a fleet on loopback, for a try: a private PostgreSQL server,
# three consolegate nodes (node-a.toml, node-b.toml, node-c.toml) and
# HAProxy in front of them (haproxy.cfg). Everything lives under
# examples/fleet/run/; Ctrl-C stops it all. Needs Debian's postgresql and
# haproxy packages and a release build (built here if missing).
#
#   examples/fleet/run.sh
#
# Then, in another terminal:
#   target/release/consolegate connection create --config examples/fleet/node-a.toml \
#       --instance demo --public-key-file ~/.ssh/id_ed25519.pub
# and paste its connectionString: HAProxy (127.0.0.1:2222) sends you to any
# node, and every node reaches the console. `consolegate cluster status
# --config examples/fleet/node-a.toml` shows who holds it; kill that node
# (kill -9) and watch the session resume on another.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
run=$here/run
pg_port=55432

bin=${CONSOLEGATE:-$root/target/release/consolegate}
if [ ! -x "$bin" ]; then
    (cd "$root" && cargo build --release)
fi
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$pg_bin/postgres" ] || { echo "no PostgreSQL: apt-get install postgresql" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "no HAProxy: apt-get install haproxy" >&2; exit 1; }

# PostgreSQL refuses to run as root: run it as the package's postgres user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

mkdir -p "$run/postgres"
[ "$(id -u)" = 0 ] && chown postgres "$run/postgres"
if [ ! -f "$run/postgres/data/PG_VERSION" ]; then
    as_pg "$pg_bin/initdb" -D "$run/postgres/data" -U consolegate --auth=trust -E UTF8 >"$run/initdb.log"
fi
as_pg "$pg_bin/pg_ctl" start -D "$run/postgres/data" -l "$run/postgres/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $run/postgres"
"$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U consolegate -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'consolegate'" | grep -q 1 \
    || "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U consolegate -d postgres -qc "CREATE DATABASE consolegate"

# Nodes behind one name share one set of SSH host keys, so users' ssh sees
# one gateway whichever node answers. Each keeps its own node link key.
mkdir -p "$run/keys"
[ -f "$run/keys/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -C consolegate -f "$run/keys/ssh_host_ed25519_key"
[ -f "$run/keys/ssh_host_rsa_key" ] || ssh-keygen -q -t rsa -b 3072 -N '' -C consolegate -f "$run/keys/ssh_host_rsa_key"

pids=()
stop() {
    trap - INT TERM EXIT
    echo "stopping the fleet"
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    as_pg "$pg_bin/pg_ctl" stop -D "$run/postgres/data" -m fast >/dev/null || true
}
trap stop INT TERM EXIT

for n in a b c; do
    install -d -m 700 "$run/$n"
    cp "$run"/keys/ssh_host_ed25519_key "$run"/keys/ssh_host_rsa_key "$run/$n/"
    chmod 600 "$run/$n"/ssh_host_*
    "$bin" serve --config "$here/node-$n.toml" 2>"$run/node-$n.log" &
    pids+=($!)
done
haproxy -f "$here/haproxy.cfg" -db 2>"$run/haproxy.log" &
pids+=($!)

for _ in $(seq 1 100); do
    alive=$("$bin" cluster status --json --config "$here/node-a.toml" 2>/dev/null | grep -c '"state": "alive"' || true)
    [ "$alive" = 3 ] && break
    sleep 0.2
done
"$bin" cluster status --config "$here/node-a.toml"
cat <<MSG

The fleet is up: SSH through HAProxy on 127.0.0.1:2222, the API on
http://127.0.0.1:8080. Logs in $run/. Create a connection with
  $bin connection create --config $here/node-a.toml --instance demo --public-key-file ~/.ssh/id_ed25519.pub
and paste its connectionString. Ctrl-C stops everything.
MSG
wait
