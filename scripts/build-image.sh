#!/usr/bin/env bash
# Build the operator image, localhost/poolbudget:<version>, with podman on a Debian bookworm machine, as root.
# No image registry is reachable here, so the base image is made locally with debootstrap (Debian's python3,
# 3.11) and imported as localhost/poolbudget-base:bookworm; the Dockerfile's default base (the official slim
# Python image) is what users building elsewhere get.
#
# Idempotent, and quick when already done: every step checks first and says what it does.
#   - installs podman, runc and debootstrap if missing;
#   - writes /etc/containers/containers.conf (no default ulimits, cgroupfs) unless it already says so;
#   - makes the base image once (cached in podman's storage; debootstrap's .debs under ~/.cache/poolbudget/);
#   - podman build --network host; pip inside the build trusts the host's CA bundle, passed as a build secret
#     (mounted for the step that downloads only, never copied into the image).
# Podman always runs with --storage-driver vfs --runtime runc (crun fails on these machines' cgroups).
#
# Usage: scripts/build-image.sh [--rebuild | --no-cache]
#   --rebuild    run podman build even when the image is up to date (podman's layer cache still applies)
#   --no-cache   remake the base image and build without podman's layer cache (a cold build, to measure it)
# Prints the image reference on its last line of stdout; everything else goes to stderr. Exits 3 when podman,
# runc or debootstrap cannot be installed (tests skip on that alone), non-zero on any other failure.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${POOLBUDGET_BASE_IMAGE:-localhost/poolbudget-base:bookworm}"
CACHE_DIR="${POOLBUDGET_CACHE_DIR:-$HOME/.cache/poolbudget}"
CA_BUNDLE="${POOLBUDGET_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
CONTAINERS_CONF=/etc/containers/containers.conf
SUITE=bookworm
PODMAN=(podman --storage-driver vfs --runtime runc)
EXIT_NO_ENGINE=3

NO_CACHE=0
REBUILD=0
for argument in "$@"; do
  case "$argument" in
  --no-cache) NO_CACHE=1 REBUILD=1 ;;
  --rebuild) REBUILD=1 ;;
  *)
    echo "usage: $0 [--rebuild | --no-cache]" >&2
    exit 2
    ;;
  esac
done

say() { printf '== build-image: %s\n' "$*" >&2; }
seconds_since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

VERSION="$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
IMAGE="localhost/poolbudget:$VERSION"

install_packages() {
  local missing=()
  command -v podman >/dev/null || missing+=(podman)
  command -v runc >/dev/null || missing+=(runc)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -eq 0 ]; then
    say "podman, runc and debootstrap are present ($(podman --version))"
    return
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
    say "apt-get update (no package lists yet)"
    as_root apt-get update -qq
  fi
  say "apt-get install ${missing[*]}"
  if ! as_root apt-get install -y -qq "${missing[@]}" >&2; then
    say "install failed: apt-get update, then one more try"
    as_root apt-get update -qq || true
    as_root apt-get install -y -qq "${missing[@]}" >&2 || {
      say "cannot install ${missing[*]}: no container engine here"
      exit "$EXIT_NO_ENGINE"
    }
  fi
}

# containers.conf: crun and systemd cgroups fail here, and podman's default ulimits cannot be set in this sandbox.
containers_conf_ok() {
  [ -f "$CONTAINERS_CONF" ] && python3 - "$CONTAINERS_CONF" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    conf = tomllib.load(f)
ok = conf.get("containers", {}).get("default_ulimits") == [] and conf.get("engine", {}).get("cgroup_manager") == "cgroupfs"
sys.exit(0 if ok else 1)
EOF
}

write_containers_conf() {
  if containers_conf_ok; then
    say "$CONTAINERS_CONF already sets default_ulimits = [] and cgroup_manager = \"cgroupfs\""
    return
  fi
  if [ -f "$CONTAINERS_CONF" ]; then
    say "keeping the previous $CONTAINERS_CONF as $CONTAINERS_CONF.before-poolbudget"
    as_root cp "$CONTAINERS_CONF" "$CONTAINERS_CONF.before-poolbudget"
  fi
  say "writing $CONTAINERS_CONF (default_ulimits = [], cgroup_manager = \"cgroupfs\")"
  as_root mkdir -p "$(dirname "$CONTAINERS_CONF")"
  printf '%s\n' '# Written by poolbudget scripts/build-image.sh.' \
    '[containers]' 'default_ulimits = []' '' '[engine]' 'cgroup_manager = "cgroupfs"' |
    as_root tee "$CONTAINERS_CONF" >/dev/null
}

# The Debian mirror apt is configured with (deb822 sources first, then the one-line format).
debian_mirror() {
  local mirror=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    mirror="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror="$(awk '$1 == "deb" && $3 ~ /^bookworm$/ { print $2; exit }' /etc/apt/sources.list)"
  fi
  printf '%s\n' "${mirror:-http://deb.debian.org/debian}"
}

make_base_image() {
  if [ "$NO_CACHE" -eq 1 ] && "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    say "--no-cache: removing $BASE_IMAGE to make it again"
    "${PODMAN[@]}" rmi --force "$BASE_IMAGE" >/dev/null
  fi
  if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
    say "base image $BASE_IMAGE exists"
    return
  fi
  local mirror started
  mirror="$(debian_mirror)"
  started="$(date +%s.%N)"
  mkdir -p "$CACHE_DIR/debootstrap-debs"
  ROOTFS="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  trap 'rm -rf "$ROOTFS"' EXIT
  say "debootstrap --variant=minbase $SUITE from $mirror into $ROOTFS (.debs cached in $CACHE_DIR/debootstrap-debs)"
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --cache-dir="$CACHE_DIR/debootstrap-debs" "$SUITE" "$ROOTFS" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1 || {
    say "debootstrap failed; the end of $CACHE_DIR/debootstrap.log:"
    tail -20 "$CACHE_DIR/debootstrap.log" >&2
    exit 1
  }
  # mktemp made the directory 0700: it becomes the image's /, which a non-root user must be able to enter.
  chmod 0755 "$ROOTFS"
  # Nothing installs packages at run time: no .debs, no package lists. Manuals, docs and translations go as in
  # Debian's slim images; each package's copyright file stays.
  rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
  find "$ROOTFS"/usr/share/doc -mindepth 1 -not -type d -not -name copyright -delete
  find "$ROOTFS"/usr/share/doc -mindepth 1 -type d -empty -delete
  say "importing $ROOTFS as $BASE_IMAGE"
  tar -C "$ROOTFS" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates $SUITE $mirror" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$ROOTFS"
  trap - EXIT
  say "base image made in $(seconds_since "$started") s"
}

# A digest of everything the build reads: the Dockerfile, .dockerignore, the files it lets into the context, the
# base image's ID and the version. The image carries it as a label; when they match, there is nothing to build
# (podman's layer cache would get there too, but with vfs storage even a fully cached build copies whole layers).
inputs_digest() {
  python3 - "$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$BASE_IMAGE")" "$VERSION" <<'EOF'
import fnmatch, hashlib, os, sys

digest = hashlib.sha256("\0".join(sys.argv[1:]).encode())
rules = [line.strip() for line in open(".dockerignore") if line.strip() and not line.startswith("#")]
allowed = [rule[1:].rstrip("/") for rule in rules if rule.startswith("!")]
excluded = [rule.replace("**/", "*/") for rule in rules if not rule.startswith("!") and rule != "*"]


def sent(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return not any(fnmatch.fnmatch(prefix, rule) for rule in excluded for prefix in prefixes)


files = ["Dockerfile", ".dockerignore"]
for top in allowed:
    if os.path.isfile(top):
        files.append(top)
    for root, dirs, names in os.walk(top):
        dirs.sort()
        files += sorted(f"{root}/{name}" for name in names if sent(f"{root}/{name}"))
for path in files:
    with open(path, "rb") as f:
        digest.update(path.encode() + b"\0" + hashlib.sha256(f.read()).digest())
print(digest.hexdigest())
EOF
}

build_image() {
  local started digest cache=()
  [ -f "$CA_BUNDLE" ] || { say "no CA bundle at $CA_BUNDLE (set POOLBUDGET_CA_BUNDLE)"; exit 1; }
  digest="$(inputs_digest)"
  if [ "$REBUILD" -eq 0 ] && "${PODMAN[@]}" image exists "$IMAGE" &&
    [ "$("${PODMAN[@]}" image inspect --format '{{index .Labels "io.poolbudget.inputs-sha256"}}' "$IMAGE")" = "$digest" ]; then
    say "$IMAGE is up to date (built from these inputs, ${digest:0:12}): nothing to build"
    return
  fi
  [ "$NO_CACHE" -eq 1 ] && cache=(--no-cache)
  started="$(date +%s.%N)"
  say "podman build $IMAGE on $BASE_IMAGE${cache:+ (no layer cache)}"
  "${PODMAN[@]}" build --network host --pull=never "${cache[@]}" \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" \
    --secret "id=pip-ca,src=$CA_BUNDLE" \
    --build-arg PIP_CERT=/run/secrets/pip-ca \
    --label "org.opencontainers.image.version=$VERSION" \
    --label "io.poolbudget.inputs-sha256=$digest" \
    --tag "$IMAGE" --file Dockerfile . >&2
  say "built $IMAGE in $(seconds_since "$started") s; $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE" |
    awk '{ printf "%.1f MB", $1 / 1e6 }')"
  prune_previous_builds
}

# vfs stores every layer as a full copy of the file system: drop the images earlier builds left untagged (their
# final images, and all their build stages but the newest, which the next build's layer cache starts from).
prune_previous_builds() {
  local stale
  stale="$({
    "${PODMAN[@]}" images --noheading --filter dangling=true --filter label=org.opencontainers.image.title=poolbudget \
      --format '{{.ID}}'
    "${PODMAN[@]}" images --noheading --filter dangling=true --filter label=io.poolbudget.stage=build \
      --sort created --format '{{.ID}}' | tail -n +2
  } | sort -u)"
  if [ -n "$stale" ]; then
    say "removing $(wc -w <<<"$stale") untagged image(s) left by earlier builds"
    # shellcheck disable=SC2086 # image IDs, one word each
    "${PODMAN[@]}" rmi $stale >/dev/null 2>&1 || say "some were still in use; kept them"
  fi
}

STARTED="$(date +%s.%N)"
install_packages
write_containers_conf
make_base_image
build_image
say "done in $(seconds_since "$STARTED") s"
printf '%s\n' "$IMAGE"
