#!/usr/bin/env bash
# Installs a Vulkan loader and Mesa's software Vulkan driver (lavapipe) when no Vulkan ICD is
# present, so wgpu finds an adapter on machines without a GPU. Needs apt and root; otherwise it
# says what to install and leaves the decision to the tests (which fail under CI=true).
set -euo pipefail
if ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
  exit 0
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "install-vulkan: installing mesa-vulkan-drivers and libvulkan1 (lavapipe)" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
else
  echo "install-vulkan: no Vulkan driver found; install mesa-vulkan-drivers and libvulkan1" >&2
fi
