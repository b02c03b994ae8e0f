#!/usr/bin/env bash
# Makes sure this machine has a GPU driver wgpu can use. On a Debian bookworm
# machine without one, installs Mesa's software drivers (lavapipe for Vulkan,
# llvmpipe for GL) from bookworm-backports: Mesa 25.x runs compute shaders
# 5-8x faster than bookworm's 22.3. The backports source is derived from the
# machine's own Debian source, so no package host is written here.
# Idempotent: does nothing when Mesa >= 25 is already installed.
set -euo pipefail

installed=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
if [ -n "$installed" ] && [ "${installed%%.*}" -ge 25 ] 2>/dev/null; then
  echo "mesa-vulkan-drivers $installed already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "not a Debian-family system: install your GPU's Vulkan driver (or Mesa's lavapipe) by hand" >&2
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "run as root (or install sudo) to install Mesa" >&2; exit 1; }
  SUDO=sudo
fi

SRC_DIR=/etc/apt/sources.list.d
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
if ! grep -rqs -- "${codename}-backports" "$SRC_DIR" /etc/apt/sources.list; then
  # Copy the stanza that serves the plain release suite, pointed at its backports suite.
  base=$(grep -ls -E "^Suites:.*\b${codename}\b" "$SRC_DIR"/*.sources | head -n1 || true)
  if [ -n "$base" ]; then
    awk -v rel="$codename" 'BEGIN { RS = ""; ORS = "\n\n" }
      $0 ~ ("Suites:[^\n]*" rel "([ \n]|$)") && $0 !~ /security/ {
        gsub(/Suites:[^\n]*/, "Suites: " rel "-backports"); print; exit }' "$base" \
      | $SUDO tee "$SRC_DIR/dora-wgpu-backports.sources" >/dev/null
  else
    grep -E "^deb [^ ]+ ${codename} main" /etc/apt/sources.list | head -n1 \
      | sed "s/ ${codename} main/ ${codename}-backports main/" \
      | $SUDO tee "$SRC_DIR/dora-wgpu-backports.list" >/dev/null
  fi
fi

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t "${codename}-backports" \
  mesa-vulkan-drivers libvulkan1 libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null
echo "installed mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers)"
