#!/usr/bin/env bash
# `make image-check`: the image that ships (deploy/Dockerfile, built by `make image`), run the way
# @rabbitmq-begin
# the chart runs it: read-only root filesystem, as uid 65532, against PostgreSQL and RabbitMQ.
# @rabbitmq-else
# # the chart runs it: read-only root filesystem, as uid 65532, against PostgreSQL.
# @rabbitmq-end
# Passes only if /readyz answers 200 with every check passing and SIGTERM ends it with exit 0.
# Needs IMAGE (the tag `make image` built); fails, never skips, when it cannot build or run.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${IMAGE:?IMAGE is the tag make image built}

# crun fails on hybrid cgroup hosts; runc with explicit ulimits works (LOCAL-SERVICES.md).
run_flags=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
name=shipshape-image-check-$$
api=18080 mgmt=19090
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
fail() { echo "image-check FAILED: $*" >&2; podman logs "$name" 2>&1 | tail -n 20 >&2 || true; exit 1; }

echo "image: $image, $(podman image inspect "$image" --format '{{.Size}}') bytes"
[ "$(podman image inspect "$image" --format '{{.Config.User}}')" = "65532:65532" ] || fail "image user is not 65532:65532"
label() { podman image inspect "$image" --format "{{index .Labels \"org.opencontainers.image.$1\"}}"; }
for key in version revision created source; do
  [ -n "$(label $key)" ] || fail "OCI label org.opencontainers.image.$key is missing"
done
echo "labels: version $(label version), revision $(label revision), created $(label created)"

psql -h 127.0.0.1 -U postgres -XAtqc "SELECT 1 FROM pg_database WHERE datname = 'shipshape_image'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -Xqc 'CREATE DATABASE shipshape_image'
# Host names, not addresses: resolution must work in an image without a libc to load.
settings=(-e APP__SERVER__HOST=127.0.0.1 -e APP__SERVER__PORT=$api -e APP__MANAGEMENT__PORT=$mgmt
  -e APP__DATABASE__URL=postgres://postgres@localhost:5432/shipshape_image)
settings+=(-e APP__RABBITMQ__URL=amqp://guest:guest@localhost:5672/%2f)  # @rabbitmq
settings+=(-e APP__RABBITMQ__EXCHANGE=shipshape.image-check -e APP__RABBITMQ__QUEUE=shipshape.image-check)  # @rabbitmq
podman run -d --name "$name" "${run_flags[@]}" --read-only --network host "${settings[@]}" \
  -e APP__SHUTDOWN__DRAIN_DELAY=1s "$image" >/dev/null || fail "podman run"

pid=$(podman inspect "$name" --format '{{.State.Pid}}')
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = 65532 ] || fail "the service runs as uid $uid, not 65532"
echo "process: pid $pid on the host, uid $uid"

deadline=$((SECONDS + 30))
until curl -fsS -o /dev/null "http://127.0.0.1:$mgmt/readyz"; do
  [ "$(podman inspect "$name" --format '{{.State.Running}}')" = true ] || fail "the container exited"
  [ $SECONDS -lt $deadline ] || fail "/readyz not 200 within 30 s"
  sleep 0.2
done
report=$(curl -fsS "http://127.0.0.1:$mgmt/readyz?verbose")
echo "readyz: $report"
# @rabbitmq-begin
grep -q '^{"status":"pass"' <<<"$report" || fail "readiness is not pass (every check, RabbitMQ included)"
# @rabbitmq-else
# grep -q '^{"status":"pass"' <<<"$report" || fail "readiness is not pass (every check)"
# @rabbitmq-end

# The listing goes to a variable first: `grep -q` closing the pipe early would fail pipefail.
files=$(podman export "$name" | tar -t)
grep -qx 'etc/ssl/certs/ca-certificates.crt' <<<"$files" || fail "no CA bundle in the image"
echo "CA bundle: /etc/ssl/certs/ca-certificates.crt, $(grep -c 'BEGIN CERTIFICATE' dist/image/ca-certificates.crt) certificates"

podman kill --signal TERM "$name" >/dev/null
code=$(timeout 60 podman wait "$name") || fail "no exit within 60 s of SIGTERM"
echo "exit code after SIGTERM: $code"
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
echo "image-check passed"
