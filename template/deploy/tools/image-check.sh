{% raw %}#!/usr/bin/env bash
# `make image-check`: the container image proven as far as a machine without a registry allows.
# Builds a statically linked release binary, puts it in a FROM-scratch image with podman, runs
# it read-only as a non-root user against PostgreSQL and RabbitMQ on the host, checks /readyz,
# then SIGTERM must give exit code 0 (the service is PID 1 of its container).
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v podman >/dev/null; then
  echo "image-check skipped: podman is not installed (apt-get install podman buildah runc)"; exit 0
fi
# crun fails on hybrid cgroup hosts; runc with explicit ulimits works (LOCAL-SERVICES.md).
run_flags=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
if ! podman "${run_flags[0]}" "${run_flags[1]}" info >/dev/null 2>&1; then
  echo "image-check skipped: podman cannot run containers on this machine"; exit 0
fi

target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --bin {% endraw %}{{project-name}}{% raw %} \
  --target "$target" --target-dir target/static
binary=target/static/$target/release/{% endraw %}{{project-name}}{% raw %}
file "$binary" | grep -qE 'static(-pie)? linked|statically linked' || { echo "not a static binary: $(file "$binary")" >&2; exit 1; }

context=$(mktemp -d)
name={% endraw %}{{project-name}}{% raw %}-image-check-$$
cleanup() { podman rm -f "$name" >/dev/null 2>&1 || true; rm -rf "$context"; }
trap cleanup EXIT
cp "$binary" "$context/{% endraw %}{{project-name}}{% raw %}"
cp -r config "$context/config"
podman build --quiet -f deploy/Containerfile.scratch -t localhost/{% endraw %}{{project-name}}{% raw %}:check "$context" >/dev/null
echo "image: $(podman image inspect localhost/{% endraw %}{{project-name}}{% raw %}:check --format '{{.Size}}') bytes"

api=18080 mgmt=19090
psql -h 127.0.0.1 -U postgres -XAtqc "SELECT 1 FROM pg_database WHERE datname = '{% endraw %}{{crate_name}}{% raw %}_image'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -Xqc 'CREATE DATABASE {% endraw %}{{crate_name}}{% raw %}_image'
podman run -d --name "$name" "${run_flags[@]}" --read-only --user 65532:65532 --network host \
  -e APP__SERVER__HOST=127.0.0.1 -e APP__SERVER__PORT=$api -e APP__MANAGEMENT__PORT=$mgmt \
  -e APP__DATABASE__URL=postgres://postgres@127.0.0.1:5432/{% endraw %}{{crate_name}}{% raw %}_image \
  -e APP__RABBITMQ__QUEUE={% endraw %}{{project-name}}{% raw %}.image-check -e APP__SHUTDOWN__DRAIN_DELAY=1s \
  localhost/{% endraw %}{{project-name}}{% raw %}:check >/dev/null
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$mgmt/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$mgmt/readyz?verbose" && echo
[ "$(podman inspect "$name" --format '{{.Config.User}}')" = "65532:65532" ]
podman kill --signal TERM "$name" >/dev/null
code=$(podman wait "$name")
echo "exit code after SIGTERM: $code"
[ "$code" = 0 ]
echo "image-check passed"
{% endraw %}