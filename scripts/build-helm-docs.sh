#!/usr/bin/env bash
# Build helm-docs (renders helm/poolbudget/README.md from values.yaml's `# --` comments) from its Go module, at a
# pinned version, into a cache outside the checkout, and link it into .tools/bin/helm-docs. No registry ships a
# helm-docs binary we can reach, but the Go module proxy serves its source. Idempotent: a binary already built
# for this version is reused (a clean clone on the same machine links it in well under a second).
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_DOCS_VERSION="${HELM_DOCS_VERSION:-v1.14.2}"
CACHE_DIR="${POOLBUDGET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/poolbudget}"
BIN_DIR="$CACHE_DIR/helm-docs-$HELM_DOCS_VERSION/bin"
TOOLS_BIN="${TOOLS_BIN:-$PWD/.tools/bin}"

say() { printf '== build-helm-docs: %s\n' "$*"; }

runs() { [ -x "$1" ] && "$1" --help >/dev/null 2>&1; }

if runs "$BIN_DIR/helm-docs"; then
  say "helm-docs $HELM_DOCS_VERSION is built at $BIN_DIR/helm-docs"
else
  command -v go >/dev/null || { say "go is not installed: it is needed to build helm-docs" >&2; exit 1; }
  say "go install github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION (a few minutes cold)"
  mkdir -p "$(dirname "$BIN_DIR")"
  # Built into a scratch directory and moved into place, so a concurrent run never sees half a binary.
  partial="$(mktemp -d "$(dirname "$BIN_DIR")/.bin-XXXXXX")"
  trap 'rm -rf "$partial"' EXIT
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$partial" \
    go install -trimpath -ldflags "-s -w -X main.version=${HELM_DOCS_VERSION#v}" \
    "github.com/norwoodj/helm-docs/cmd/helm-docs@$HELM_DOCS_VERSION"
  runs "$partial/helm-docs" || { say "the built helm-docs does not run" >&2; exit 1; }
  rm -rf "$BIN_DIR"
  mv "$partial" "$BIN_DIR"
  trap - EXIT
fi

mkdir -p "$TOOLS_BIN"
ln -sfn "$BIN_DIR/helm-docs" "$TOOLS_BIN/helm-docs"
say "linked $TOOLS_BIN/helm-docs -> $BIN_DIR/helm-docs"
