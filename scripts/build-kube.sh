#!/usr/bin/env bash
# Build the real Kubernetes control plane the `kube` tests run on, from Go modules, pinned:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (k8s.io/kubernetes $KUBE_VERSION),
#   etcd (go.etcd.io/etcd/server/v3 $ETCD_VERSION), kwok (sigs.k8s.io/kwok $KWOK_VERSION).
# The binaries live in a cache outside the checkout, keyed by version ($POOLBUDGET_CACHE/kube-$KUBE_VERSION/...),
# and .tools/bin links to them, so a fresh clone on the same machine builds nothing. Go's own module and build
# caches stay in their default places under $HOME. Idempotent: every step checks first and says what it does.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE="${POOLBUDGET_CACHE:-$HOME/.cache/poolbudget}"
TOOLS_BIN="${TOOLS_BIN:-$PWD/.tools/bin}"

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

say() { printf '== build-kube: %s\n' "$*"; }

# A wrapper module that requires $1@$2 and pins every module the wrapped go.mod replaces with a local path
# (k8s.io/kubernetes points its ~30 staging modules at ./staging/src/...; etcd's server at ../api, ...):
# replace directives of a dependency are ignored, so the wrapper must name a published version for each.
write_wrapper() {
  local dir=$1 module=$2 version=$3 staging_version=$4
  local gomod
  gomod="$(go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
  mkdir -p "$dir"
  {
    printf 'module poolbudget.test/build\n\ngo 1.24\n\nrequire %s %s\n\n' "$module" "$version"
    # `name => ./path` or `name => ../path` lines, inside or outside a replace ( ... ) block.
    sed -n 's/^\(replace \)\{0,1\}[[:space:]]*\([^[:space:]]*\) => \.\{1,2\}\/.*/\2/p' "$gomod" |
      { grep -v '^go.etcd.io/etcd$\|^go.etcd.io/tests/v3$' || true; } |
      while read -r staged; do printf 'replace %s => %s %s\n' "$staged" "$staged" "$staging_version"; done
  } >"$dir/go.mod"
}

build_in_wrapper() {
  local dir=$1 version=$2 ldflags=$3
  shift 3
  (
    cd "$dir"
    # go get writes go.sum for every package below, at the pinned version (without @version it would upgrade).
    go get "${@/%/@$version}"
    for package in "$@"; do
      local name=${package##*/}
      [ "$name" = v3 ] && name=etcd
      say "go build $package -> $dir/bin/$name"
      go build -trimpath -ldflags "$ldflags" -o "bin/$name.partial" "$package"
      mv "bin/$name.partial" "bin/$name"
    done
  )
}

kube_dir="$CACHE/kube-$KUBE_VERSION"
etcd_dir="$CACHE/etcd-$ETCD_VERSION"
kwok_dir="$CACHE/kwok-$KWOK_VERSION"
kube_binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl)

have_all() {
  local dir=$1
  shift
  for name in "$@"; do [ -x "$dir/bin/$name" ] || return 1; done
}

if have_all "$kube_dir" "${kube_binaries[@]}"; then
  say "Kubernetes $KUBE_VERSION binaries are in $kube_dir/bin"
else
  start=$(date +%s)
  say "building Kubernetes $KUBE_VERSION into $kube_dir (cold: 15-30 min on 2 cores)"
  staging="v0.${KUBE_VERSION#v1.}"
  write_wrapper "$kube_dir" k8s.io/kubernetes "$KUBE_VERSION" "$staging"
  minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  build_in_wrapper "$kube_dir" "$KUBE_VERSION" "$ldflags" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  say "Kubernetes built in $(($(date +%s) - start)) s"
fi

if have_all "$etcd_dir" etcd; then
  say "etcd $ETCD_VERSION is in $etcd_dir/bin"
else
  start=$(date +%s)
  say "building etcd $ETCD_VERSION into $etcd_dir"
  write_wrapper "$etcd_dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "$ETCD_VERSION"
  build_in_wrapper "$etcd_dir" "$ETCD_VERSION" "-s -w" go.etcd.io/etcd/server/v3
  say "etcd built in $(($(date +%s) - start)) s"
fi

if have_all "$kwok_dir" kwok; then
  say "kwok $KWOK_VERSION is in $kwok_dir/bin"
else
  start=$(date +%s)
  say "building kwok $KWOK_VERSION into $kwok_dir"
  write_wrapper "$kwok_dir" sigs.k8s.io/kwok "$KWOK_VERSION" "$KWOK_VERSION"
  build_in_wrapper "$kwok_dir" "$KWOK_VERSION" "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
  say "kwok built in $(($(date +%s) - start)) s"
fi

mkdir -p "$TOOLS_BIN"
for name in "${kube_binaries[@]}"; do ln -sfn "$kube_dir/bin/$name" "$TOOLS_BIN/$name"; done
ln -sfn "$etcd_dir/bin/etcd" "$TOOLS_BIN/etcd"
ln -sfn "$kwok_dir/bin/kwok" "$TOOLS_BIN/kwok"
say "$("$TOOLS_BIN/kube-apiserver" --version), etcd $("$TOOLS_BIN/etcd" --version | head -1 | awk '{print $3}'), kwok $KWOK_VERSION: linked in $TOOLS_BIN"
