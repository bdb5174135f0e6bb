#!/usr/bin/env bash
# tools.sh builds the pinned binaries that tests and the demo need, once per
# version, into a cache outside the repository, and prints the directory that
# holds them. Everything comes from the Go module proxy; nothing is downloaded
# from anywhere else.
#
#   hack/tools.sh kube        etcd, kube-apiserver, kube-controller-manager, kubectl
#   hack/tools.sh gatekeeper  the Gatekeeper manager
#   hack/tools.sh gatekeeper-old  the oldest Gatekeeper manager the README claims
#   hack/tools.sh gator       stock gator, to prove pure-Rego suites need nothing more
#   hack/tools.sh staticcheck
#   hack/tools.sh helm
#   hack/tools.sh node        kubelet, kube-scheduler (Kubernetes' module, like kube) and
#                             containerd, containerd-shim-runc-v2, ctr; the Debian
#                             packages a node also needs come from hack/node-packages.sh
#
# Versions are pinned here and in test/tools/go.mod (Kubernetes); the cache key
# is the version, so a second run costs nothing.
set -euo pipefail

KUBE_VERSION=v1.36.3
GATEKEEPER_VERSION=v3.23.1
# The oldest Gatekeeper exec-reaper supports (README); test/e2e/versions_test.go
# runs the templates and recording against it.
GATEKEEPER_OLD_VERSION=v3.17.1
STATICCHECK_VERSION=v0.7.0
HELM_VERSION=v3.22.0
CONTAINERD_VERSION=v2.4.2

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EXEC_REAPER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-reaper-tools}

# build NAME VERSION CMD...: run CMD with $out set, unless NAME-VERSION is done.
build() {
	local name=$1 version=$2
	shift 2
	out="$cache/$name-$version"
	if [[ -f "$out/.done" ]]; then
		echo "$out"
		return
	fi
	mkdir -p "$out"
	local start=$SECONDS
	echo ">> building $name $version into $out (first run only; progress below)" >&2
	# A heartbeat, since one go build can be silent for minutes.
	(while sleep 30; do echo "   ... still building $name ($((SECONDS - start))s)" >&2; done) &
	local heartbeat=$!
	trap "kill $heartbeat 2>/dev/null || true" EXIT
	"$@" >&2
	kill "$heartbeat" 2>/dev/null || true
	touch "$out/.done"
	echo ">> built $name $version in $((SECONDS - start))s" >&2
	echo "$out"
}

kube() {
	cd "$root/test/tools"
	local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
	ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
	for cmd in etcd:./etcd kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver \
		kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager \
		kubectl:k8s.io/kubernetes/cmd/kubectl; do
		echo "   go build ${cmd%%:*}" >&2
		go build -trimpath -ldflags "$ldflags" -o "$out/${cmd%%:*}" "${cmd#*:}"
	done
}

node() {
	cd "$root/test/tools"
	local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
	for cmd in kubelet kube-scheduler; do
		echo "   go build $cmd" >&2
		go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
	done
	# containerd's own go.mod pins its dependencies; go install with a version
	# honours them. The tags drop snapshotters that need cgo or kernel extras.
	echo "   go install containerd $CONTAINERD_VERSION" >&2
	CGO_ENABLED=0 GOBIN="$out" go install -trimpath -ldflags "-s -w" \
		-tags 'no_btrfs no_devmapper no_zfs' \
		"github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
		"github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
}

gatekeeper() {
	local version=${1:-$GATEKEEPER_VERSION}
	# go install with a version builds exactly the dependencies Gatekeeper
	# pinned; its go.mod has no replace directives.
	GOBIN="$out" go install -trimpath -ldflags "-s -w" \
		"github.com/open-policy-agent/gatekeeper/v3@$version"
	# go names the binary of a /v3 module after the path element before it.
	mv "$out/gatekeeper" "$out/manager"
	# The CRDs ship in the module; copy them next to the binary.
	local mod
	mod=$(GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "github.com/open-policy-agent/gatekeeper/v3@$version")
	mkdir -p "$out/crds"
	cp "$mod"/charts/gatekeeper/crds/*.yaml "$out/crds/"
	chmod -R u+w "$out/crds"
}

gator() {
	GOBIN="$out" go install -trimpath -ldflags "-s -w" \
		"github.com/open-policy-agent/gatekeeper/v3/cmd/gator@$GATEKEEPER_VERSION"
}

staticcheck() {
	GOBIN="$out" go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
}

helm() {
	GOBIN="$out" go install -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
}

case "${1:-}" in
kube) build kube "$KUBE_VERSION" kube ;;
gatekeeper) build gatekeeper "$GATEKEEPER_VERSION" gatekeeper ;;
gatekeeper-old) build gatekeeper "$GATEKEEPER_OLD_VERSION" gatekeeper "$GATEKEEPER_OLD_VERSION" ;;
gator) build gator "$GATEKEEPER_VERSION" gator ;;
staticcheck) build staticcheck "$STATICCHECK_VERSION" staticcheck ;;
helm) build helm "$HELM_VERSION" helm ;;
node) build node "$KUBE_VERSION-containerd-$CONTAINERD_VERSION" node ;;
*)
	echo "usage: $0 kube|gatekeeper|gatekeeper-old|gator|staticcheck|helm|node" >&2
	exit 2
	;;
esac
