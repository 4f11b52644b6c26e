#!/usr/bin/env bash
# Builds the one image of the service (deploy/Dockerfile).
#   image.sh context   static release binary + CA bundle into dist/image/ (the Dockerfile's inputs)
#   image.sh build     context, then `$CONTAINER build` tagged $IMAGE
# Environment: IMAGE_FILE (the Makefile's, the one image definition), IMAGE (default localhost/shipshape:dev), CONTAINER (podman, else docker),
# VERSION / REVISION / CREATED / SOURCE for the OCI labels (git and the clock by default).
set -euo pipefail
cd "$(dirname "$0")/../.."

dockerfile=${IMAGE_FILE:-}
out=dist/image

context() {
  local target
  target=$(rustc -vV | sed -n 's/^host: //p')
  # glibc, linked statically: the image has no libc to load. Since glibc 2.34 the `files` and
  # `dns` NSS modules live inside libc, so host names still resolve without shared objects.
  # cargo auditable embeds the crate list in the binary, for SBOM scanners (syft, trivy) to read:
  # AUDITABLE=required (the release) fails without it; by default it is used when installed.
  local build=(cargo build)
  if command -v cargo-auditable >/dev/null; then
    build=(cargo auditable build)
  elif [ "${AUDITABLE:-}" = required ]; then
    echo "image: AUDITABLE=required but cargo-auditable is not installed (cargo install --locked cargo-auditable)" >&2
    exit 1
  fi
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    "${build[@]}" --release --locked --bin shipshape --target "$target" --target-dir target/static
  local binary=target/static/$target/release/shipshape
  if ! file -b "$binary" | grep -qE 'static(-pie)? linked|statically linked'; then
    echo "image: $binary is not statically linked: $(file -b "$binary")" >&2
    exit 1
  fi
  local bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
  [ -s "$bundle" ] || { echo "image: no CA bundle at $bundle (Debian package ca-certificates)" >&2; exit 1; }
  mkdir -p "$out"
  cp "$binary" "$out/shipshape"
  cp "$bundle" "$out/ca-certificates.crt"
  echo "image context: $out ($(du -sh "$out" | cut -f1))"
}

engine() {
  if [ -n "${CONTAINER:-}" ]; then echo "$CONTAINER"
  elif command -v podman >/dev/null; then echo podman
  elif command -v docker >/dev/null; then echo docker
  else echo "image: neither podman nor docker is installed" >&2; exit 1
  fi
}

build() {
  [ -n "$dockerfile" ] || { echo "image: IMAGE_FILE is unset (run it as make image)" >&2; exit 2; }
  context
  local image=${IMAGE:-localhost/shipshape:dev} engine
  engine=$(engine)
  "$engine" build --file "$dockerfile" --tag "$image" \
    --build-arg VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}" \
    --build-arg REVISION="${REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" \
    --build-arg CREATED="${CREATED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}" \
    ${SOURCE:+--build-arg SOURCE="$SOURCE"} \
    .
  echo "image: $image built from $dockerfile with $engine"
}

case "${1:-}" in
  context) context ;;
  build) build ;;
  *) echo "usage: $0 context|build" >&2; exit 2 ;;
esac
