#!/usr/bin/env bash
# CPU per request by party (the server's threads, its PostgreSQL sessions by application_name,
# RabbitMQ's beam.smp, wrk) during a 10 s wrk run, read from /proc around it. Not part of
# `make bench`: docs/benchmarks.md ("Where the request path's time goes") quotes its output.
#
#   deploy/tools/cpu-per-request.sh <floor|service|broker-away> <get|post>
#
# Needs the release binaries (`make bench` builds them; RELEASE=dir to use others), wrk, and
# PostgreSQL and RabbitMQ on their standard local ports. Uses ports 18081 and 19091. API
# workers: WORKERS (default 1, as `make bench` runs both servers); the service's log filter:
# RUST_LOG (default warn, as `make bench` runs it).
set -euo pipefail
server=${1:?floor, service or broker-away} route=${2:?get or post}
workers=${WORKERS:-1} log=${RUST_LOG:-warn}
cd "$(dirname "$0")/../.."
release=${RELEASE:-target/release}
database=cpu_per_request_$$
sql() { psql -qAt -h 127.0.0.1 -U postgres "$@"; }
sql -c "CREATE DATABASE $database" postgres
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  sql -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" postgres || true
  rm -f "$before" "$after" "$script"
}
before=$(mktemp) after=$(mktemp) script=$(mktemp --suffix .lua)
trap cleanup EXIT
# 20 connections: a request pool of 16, as the floor's POOL_SIZE, + 3 background + 1 check.
service_env=(
  "APP__DATABASE__URL=postgres://postgres@127.0.0.1:5432/$database?sslmode=disable"
  APP__SERVER__HOST=127.0.0.1 APP__SERVER__PORT=18081 APP__MANAGEMENT__PORT=19091
  APP__SERVER__WORKERS=$workers APP__DATABASE__MAX_CONNECTIONS=20 RUST_LOG=$log
  APP__RABBITMQ__EXCHANGE=cpu.events APP__RABBITMQ__QUEUE=cpu.items
)
broker=amqp://guest:guest@127.0.0.1:5672/%2f
# Until `url` answers 2xx (within 30 s).
wait_for() { for _ in $(seq 300); do curl -sf -o /dev/null "$1" && return; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }

# The service's migrations create the schema, for either server.
env "${service_env[@]}" APP__RABBITMQ__URL=$broker "$release/shipshape" >/dev/null 2>&1 & pid=$!
wait_for http://127.0.0.1:19091/readyz
kill "$pid"; wait "$pid" || true; pid=
id=$(sql -d "$database" -c "INSERT INTO items (id, name) SELECT gen_random_uuid(), 'seed ' || n FROM generate_series(1, 100) n RETURNING id" | tail -1)
case $server in
  floor) DATABASE_URL=postgres://postgres@127.0.0.1:5432/$database WORKERS=$workers POOL_SIZE=16 PORT=18081 "$release/bench-floor" >/dev/null 2>&1 & pid=$! ;;
  service) env "${service_env[@]}" APP__RABBITMQ__URL=$broker "$release/shipshape" >/dev/null 2>&1 & pid=$! ;;
  # A port nothing listens on: the relay and the consumers stay idle.
  broker-away) env "${service_env[@]}" APP__RABBITMQ__URL=amqp://guest:guest@127.0.0.1:1/%2f "$release/shipshape" >/dev/null 2>&1 & pid=$! ;;
  *) echo "unknown server $server" >&2; exit 2 ;;
esac
wait_for "http://127.0.0.1:18081/v1/items?limit=20"
if [ "$route" = post ]; then
  printf '%s\n' 'wrk.method = "POST"' "wrk.body = '{\"name\":\"bench\"}'" 'wrk.headers["Content-Type"] = "application/json"' > "$script"
  path=/v1/items
else
  echo > "$script"
  path=/v1/items/$id
fi
# Warm the pool and the statement caches.
wrk -t2 -c64 -d2s "http://127.0.0.1:18081/v1/items?limit=20" >/dev/null

ticks() { local f; f=($(cut -d')' -f2- "$1")); echo $((f[11] + f[12])); }
snapshot() {
  for task in /proc/$pid/task/*; do echo "server:$(tr -d ' ' < "$task/comm" | sed 's/[0-9]*$//') $(ticks "$task/stat")"; done
  sql -F ' ' -c "SELECT pid, coalesce(nullif(application_name, ''), 'unnamed') FROM pg_stat_activity WHERE datname = '$database'" postgres |
    while read -r backend name; do [ -r "/proc/$backend/stat" ] && echo "postgres:$name $(ticks "/proc/$backend/stat")"; done
  for beam in $(pgrep beam.smp); do echo "rabbitmq $(ticks "/proc/$beam/stat")"; done
}
snapshot > "$before"
load=$( { /usr/bin/time -f 'wrk-cpu %U %S' wrk -t2 -c64 -d10s -s "$script" "http://127.0.0.1:18081$path"; } 2>&1 )
snapshot > "$after"
python3 - "$before" "$after" "$load" "$server $route" <<'PY'
import collections, re, sys
def read(path):
    totals = collections.Counter()
    for line in open(path):
        name, ticks = line.rsplit(" ", 1)
        totals[name] += int(ticks)
    return totals
spent = read(sys.argv[2])
spent.subtract(read(sys.argv[1]))
load = sys.argv[3]
user, system = map(float, re.search(r"wrk-cpu ([\d.]+) ([\d.]+)", load).groups())
spent["wrk"] = round((user + system) * 100)
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", load).group(1))
requests = rate * 10
print(f"{sys.argv[4]}: {rate:.0f} requests/s; CPU per request (microseconds), by party:")
for name, ticks in spent.most_common():
    if ticks > 0:
        print(f"  {name:36} {ticks / 100:6.2f} CPU-s  {ticks * 1e4 / requests:7.1f}")
PY
