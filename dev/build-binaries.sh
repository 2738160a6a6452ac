#!/usr/bin/env bash
# Builds the local control plane's binaries from the Go module proxy, pinned, into a cache outside
# the repo keyed by version (a fresh clone on the same machine reuses them). Prints progress.
set -euo pipefail

# Versions come from dev/versions.env (also read by dev/localcluster/binaries.py); an environment
# variable of the same name overrides one.
VERSIONS_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/versions.env"
while IFS='=' read -r key value; do
  [[ $key =~ ^[A-Z0-9_]+$ ]] || continue
  [ -n "${!key:-}" ] || printf -v "$key" '%s' "$value"
done < "$VERSIONS_FILE"
: "${K8S_VERSION:?missing in $VERSIONS_FILE}" "${ETCD_VERSION:?missing in $VERSIONS_FILE}"
: "${KWOK_VERSION:?missing in $VERSIONS_FILE}" "${HELM_VERSION:?missing in $VERSIONS_FILE}"
: "${COREDNS_VERSION:?missing in $VERSIONS_FILE}" "${PAUSE_VERSION:?missing in $VERSIONS_FILE}"
CACHE=${PHALANX_CACHE:-$HOME/.cache/phalanx}
BIN="$CACHE/bin"
WORK="$CACHE/build"
mkdir -p "$BIN" "$WORK"

# Go is needed only when something is not cached yet. All four modules declare `go 1.26.0` and
# GOTOOLCHAIN=local forbids downloading another toolchain, so the local Go must be >= 1.26.
need_go() {
  command -v go >/dev/null || { echo "error: Go is not installed but is needed to build the control plane; install Go >= 1.26 (https://go.dev/dl) and rerun \`make binaries\`" >&2; exit 1; }
  local gv; gv=$(go env GOVERSION); gv=${gv#go}
  local major=${gv%%.*} rest=${gv#*.}; local minor=${rest%%.*}
  if (( major < 1 || (major == 1 && minor < 26) )); then
    echo "error: Go $gv is too old to build the control plane; install Go >= 1.26 (https://go.dev/dl) and rerun \`make binaries\`" >&2; exit 1
  fi
}
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
TAGS="selinux,notest,grpcnotrace"
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
have() { [ -x "$BIN/$1-$2" ]; }

# The kubelet and kube-proxy run the real node (PROFILE=real); built with the control plane because
# they share its module graph (~40 s more each).
K8S_BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy"

build_kubernetes() {
  local v=$K8S_VERSION stage=${K8S_VERSION/v1./v0.} all=1
  for b in $K8S_BINARIES; do have "$b" "$v" || all=0; done
  [ $all = 1 ] && { log "kubernetes $v cached"; return; }
  need_go
  local d="$WORK/kubernetes-$v"; mkdir -p "$d"; cd "$d"
  log "kubernetes $v: resolving modules (first time: several hundred MB)"
  [ -f go.mod ] || go mod init phalanx.local/k8sbuild >/dev/null 2>&1
  local src; src=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
  # k8s.io/kubernetes replaces its staging modules with ./staging paths; map each to the published version.
  { echo "module phalanx.local/k8sbuild"; echo; echo "go 1.24"; echo;
    echo "require k8s.io/kubernetes $v"; echo;
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$src" \
      | awk -v s="$stage" '{print "replace " $1 " => " $1 " " s}'; } > go.mod
  log "kubernetes $v: $(grep -c '^replace' go.mod) staging modules mapped to $stage"
  go get "k8s.io/kubernetes@$v" >/dev/null
  local maj=${v#v}; maj=${maj%%.*}; local min=${v#v*.}; min=${min%%.*}
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=$maj -X $p.gitMinor=$min -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  mkdir -p out
  log "kubernetes $v: compiling $K8S_BINARIES (cold: 20-40 min on 2 cores)"
  local b pkgs=(); for b in $K8S_BINARIES; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  go build -v -tags "$TAGS" -trimpath -ldflags "$ld" -o out/ "${pkgs[@]}" 2>&1 \
    | awk '{n++; if (n % 200 == 0) printf "[build] kubernetes: %d packages compiled (last: %s)\n", n, $0; fflush()}'
  for b in $K8S_BINARIES; do mv "out/$b" "$BIN/$b-$v"; done
  log "kubernetes $v: done"
}

# build_go_main NAME VERSION [MODULE]: builds the main.go read from stdin as its own module (requiring
# MODULE at VERSION, if given) into $BIN/NAME-VERSION.
build_go_main() {
  local name=$1 v=$2 req=${3:-}
  have "$name" "$v" && { log "$name $v cached"; return; }
  need_go
  local d="$WORK/$name-$v"; mkdir -p "$d"; cd "$d"
  log "$name $v: building"
  { printf 'module phalanx.local/%sbuild\n\ngo 1.24\n' "$name"; [ -z "$req" ] || printf '\nrequire %s %s\n' "$req" "$v"; } > go.mod
  cat > main.go
  go mod tidy >/dev/null 2>&1
  go build -trimpath -ldflags "-s -w" -o "$BIN/$name-$v" .
  log "$name $v: done"
}

build_etcd() {
  build_go_main etcd "$ETCD_VERSION" go.etcd.io/etcd/server/v3 <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
}

build_go_install() { # name module/cmd version ldflags
  have "$1" "$3" && { log "$1 $3 cached"; return; }
  need_go
  log "$1 $3: building"
  local gb="$WORK/gobin-$1-$3"; mkdir -p "$gb"
  GOBIN="$gb" go install -trimpath -ldflags "-s -w $4" "$2@$3"
  mv "$gb/$1" "$BIN/$1-$3"
  log "$1 $3: done"
}

# CoreDNS for the real node's cluster DNS, with only the plugins its Corefile uses: without `forward`
# it has no way to send a query upstream.
build_coredns() {
  build_go_main coredns "$COREDNS_VERSION" github.com/coredns/coredns <<'GO'
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/template"
)

// The order CoreDNS's plugin.cfg gives these plugins.
func init() {
	dnsserver.Directives = []string{"bind", "health", "errors", "cache", "template", "kubernetes"}
}

func main() { coremain.Run() }
GO
}

# The pod sandbox's pause process: sleeps, reaps orphans, exits on SIGTERM/SIGINT. No registry to
# pull registry.k8s.io/pause from, so it is built here and made into an image by localcluster.
build_pause() {
  build_go_main pause "$PAUSE_VERSION" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var st syscall.WaitStatus
			if pid, _ := syscall.Wait4(-1, &st, syscall.WNOHANG, nil); pid <= 0 {
				break
			}
		}
	}
}
GO
}

# Kueue's manager, for the local cluster's `--kueue` (dev/localcluster/kueue.py): the tests marked
# kueue run real Kueue, so `all` builds it too.
build_kueue() {
  : "${KUEUE_VERSION:?missing in $VERSIONS_FILE}"
  build_go_install kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_VERSION" \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  # The manifests (CRDs, webhooks, manager config) come from the same module's source.
  go mod download "sigs.k8s.io/kueue@$KUEUE_VERSION"
}

start=$(date +%s)
only=${1:-all}
case $only in all|etcd|kwok|helm|kubernetes|coredns|pause|kueue) ;;
  *) echo "error: unknown target '$only'; use one of: all etcd kwok helm kubernetes coredns pause kueue" >&2; exit 2 ;;
esac
[[ $only == all || $only == etcd ]] && build_etcd
[[ $only == all || $only == kwok ]] && build_go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
[[ $only == all || $only == helm ]] && build_go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
[[ $only == all || $only == kubernetes ]] && build_kubernetes
[[ $only == all || $only == coredns ]] && build_coredns
[[ $only == all || $only == pause ]] && build_pause
[[ $only == all || $only == kueue ]] && build_kueue
log "all binaries in $BIN ($(( $(date +%s) - start )) s)"
