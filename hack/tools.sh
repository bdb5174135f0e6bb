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
# and, building nothing:
#
#   hack/tools.sh key NAME    the name of NAME's directory under the cache
#   hack/tools.sh dir NAME    NAME's directory, built or not
#   hack/tools.sh versions    every pinned version, one NAME=version a line
#
# Each version is pinned once: Kubernetes and etcd in test/tools/go.mod, the
# Gatekeeper manager and gator in go.mod, the rest in hack/versions.env. A
# directory's name (its cache key) names every version its binaries are built
# from, so a bump builds afresh and a second run costs nothing.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${EXEC_REAPER_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-reaper-tools}

# modversion DIR MODULE prints the version of MODULE that DIR/go.mod requires.
modversion() {
	(cd "$root/$1" && go list -m -f '{{.Version}}' "$2")
}

# shellcheck source=versions.env
source "$root/hack/versions.env"
KUBE_VERSION=$(modversion test/tools k8s.io/kubernetes)
ETCD_VERSION=$(modversion test/tools go.etcd.io/etcd/server/v3)
GATEKEEPER_VERSION=$(modversion . github.com/open-policy-agent/gatekeeper/v3)

usage() {
	echo "usage: $0 kube|gatekeeper|gatekeeper-old|gator|staticcheck|helm|node" >&2
	echo "       $0 key NAME | dir NAME | versions" >&2
	exit 2
}

# key NAME prints the name of NAME's directory under the cache: the tool and
# every version its binaries are built from.
key() {
	case "${1:-}" in
	kube) echo "kube-$KUBE_VERSION-etcd-$ETCD_VERSION" ;;
	gatekeeper) echo "gatekeeper-$GATEKEEPER_VERSION" ;;
	gatekeeper-old) echo "gatekeeper-$GATEKEEPER_OLD_VERSION" ;;
	gator) echo "gator-$GATEKEEPER_VERSION" ;;
	staticcheck) echo "staticcheck-$STATICCHECK_VERSION" ;;
	helm) echo "helm-$HELM_VERSION" ;;
	node) echo "node-$KUBE_VERSION-containerd-$CONTAINERD_VERSION" ;;
	*) usage ;;
	esac
}

# build NAME CMD...: run CMD with $out set to NAME's directory, unless that
# is done.
build() {
	local name=$1 version
	shift
	version=$(key "$name")
	out="$cache/$version"
	if [[ -f "$out/.done" ]]; then
		echo "$out"
		return
	fi
	mkdir -p "$out"
	local start=$SECONDS
	echo ">> building $version into $out (first run only; progress below)" >&2
	# A heartbeat, since one go build can be silent for minutes.
	(while sleep 30; do echo "   ... still building $name ($((SECONDS - start))s)" >&2; done) &
	local heartbeat=$!
	trap "kill $heartbeat 2>/dev/null || true" EXIT
	"$@" >&2
	kill "$heartbeat" 2>/dev/null || true
	touch "$out/.done"
	echo ">> built $version in $((SECONDS - start))s" >&2
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
kube) build kube kube ;;
gatekeeper) build gatekeeper gatekeeper ;;
gatekeeper-old) build gatekeeper-old gatekeeper "$GATEKEEPER_OLD_VERSION" ;;
gator) build gator gator ;;
staticcheck) build staticcheck staticcheck ;;
helm) build helm helm ;;
node) build node node ;;
key) key "${2:-}" ;;
dir)
	k=$(key "${2:-}")
	echo "$cache/$k"
	;;
versions)
	echo "KUBE_VERSION=$KUBE_VERSION"
	echo "ETCD_VERSION=$ETCD_VERSION"
	echo "GATEKEEPER_VERSION=$GATEKEEPER_VERSION"
	echo "GATEKEEPER_OLD_VERSION=$GATEKEEPER_OLD_VERSION"
	echo "STATICCHECK_VERSION=$STATICCHECK_VERSION"
	echo "HELM_VERSION=$HELM_VERSION"
	echo "CONTAINERD_VERSION=$CONTAINERD_VERSION"
	;;
*) usage ;;
esac
