# Sourced by demo.sh and test.sh: installs what the testbed needs, once, idempotently.
#   - Debian packages (only those whose command is missing), with apt-get
#   - a virtual environment in .venv with the project installed editable
# Re-running is cheap: the venv is rebuilt only when pyproject.toml changes.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "testbed: needs root for network namespaces and sudo is not installed; run $(basename "$0") as root (e.g. su -c '$0')" >&2
        exit 1
    fi
    echo "testbed: needs root for network namespaces; re-running under sudo" >&2
    exec sudo -E "$0" "$@"
fi

# Debian packages the testbed and its tests use (peers, captures, the NFS baseline server).
APT_PACKAGES=(tcpdump tshark libnfs-utils rpcbind iproute2 nfs-ganesha nfs-ganesha-vfs vblade aoetools hping3
              nbdkit nbd-server qemu-utils qemu-block-extra libnbd-bin tgt libiscsi-bin
              # a real Linux kernel as the client (testbed.linux_vm): QEMU, the distro kernel and its
              # modules, a static busybox, and gcc + static libc for the in-guest helper
              qemu-system-x86 linux-image-amd64 busybox-static gcc libc6-dev)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "testbed: installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

stamp="$(sha256sum "$REPO/pyproject.toml" "$REPO/scripts/bootstrap.sh" | sha256sum | cut -c1-16)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "testbed: preparing the virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]" >"$VENV/pip.log" 2>&1; then
        tail -20 "$VENV/pip.log" >&2
        echo "testbed: pip install failed (full log: $VENV/pip.log); check the network to PyPI and retry" >&2
        exit 1
    fi
    echo "$stamp" > "$VENV/.stamp"
fi
export PATH="$VENV/bin:$PATH"
