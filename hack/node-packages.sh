#!/usr/bin/env bash
# node-packages.sh installs the Debian packages a local Kubernetes node needs
# and the Go toolchain cannot build, when any is missing, and prints nothing
# on stdout. Run as root (as CI does); otherwise it prints what to install.
#
#   runc                         the OCI runtime containerd's shim starts containers with
#   containernetworking-plugins  the bridge, host-local and loopback CNI plugins (/usr/lib/cni)
#   iptables, conntrack          called by the kubelet and the bridge plugin
#   iproute2                     `ip link delete` removes the pod bridge at teardown
#   busybox-static               one static binary that is the whole shell image (sh, tar, httpd...)
#
# apt-get update runs only if a package is missing and apt cannot find it.
set -euo pipefail

packages=(runc containernetworking-plugins iptables conntrack iproute2 busybox-static)

missing=()
for p in "${packages[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing+=("$p")
	fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
	exit 0
fi
if ! command -v apt-get >/dev/null; then
	echo "node-packages.sh: missing ${missing[*]}, and this is not a Debian-like system; install their equivalents" >&2
	exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "node-packages.sh: missing ${missing[*]}; a local node needs them. Run as root: apt-get install -y ${missing[*]}" >&2
	exit 1
fi
echo ">> installing Debian packages for the local node: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${missing[@]}" >&2; then
	apt-get update >&2
	apt-get install -y --no-install-recommends "${missing[@]}" >&2
fi
