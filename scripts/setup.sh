#!/usr/bin/env bash
# Installs what building and testing ferry needs, and nothing that is already there.
# Idempotent: a second run changes nothing. Debian/Ubuntu; uses sudo when not root.
set -euo pipefail

# libudev-dev: hwlocality asks pkg-config for hwloc's static flags, which name -ludev; the
# binaries still link libhwloc.so dynamically, and --as-needed drops libudev again.
APT_PACKAGES=(libopenmpi-dev openmpi-bin libclang-dev clang libhwloc-dev libudev-dev pkg-config build-essential)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "setup: no Rust toolchain; installing one with rustup"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi

echo "setup: $(cargo --version), $(mpirun --version 2>/dev/null | head -n 1)"
