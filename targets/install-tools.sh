#!/usr/bin/env bash
# The Debian packages that cross builds and their tests use: llvm-ar (darwin archives), clang
# (OpenCL C syntax check), the aarch64 cross linker and qemu-user (aarch64 runs), PoCL (OpenCL on
# the CPU) and lavapipe (Vulkan on the CPU, for WGSL through wgpu); and for the native engine
# (apps/native): CMake, nlohmann-json and PCRE2 (x86-64 and, for its aarch64 build, arm64; the
# engine needs it only for pre-tokenizer regexes without a built-in matcher, and the tests check
# the built-in matchers against it); and the JDK that builds and runs the Android bridge
# (apps/android) on the host. As
# root it installs what is missing; otherwise it prints the sudo line, and the tests that need a
# missing package skip with that line as the reason (with CI=true they fail instead).
set -euo pipefail
packages=(llvm clang lld g++-aarch64-linux-gnu qemu-user pocl-opencl-icd ocl-icd-libopencl1 mesa-vulkan-drivers
          cmake pkg-config libpcre2-dev nlohmann-json3-dev libpcre2-dev:arm64 openjdk-17-jdk-headless)
command -v dpkg-query >/dev/null || { echo "install-tools: not a Debian-like system; install ${packages[*]} yourself"; exit 0; }
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "install-tools: missing ${missing[*]}; run: sudo apt-get install -y ${missing[*]}"
  exit 0
fi
echo "install-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64  # libpcre2-dev:arm64
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
