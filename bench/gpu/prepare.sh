#!/usr/bin/env bash
# Run here (x86-64, registry access) before a device session: puts what the GPU box lacks into
# ignored folders that the device tool carries: the Vulkan loader (.gl/, per the device
# README), Deno as an xz-compressed binary (.gpu/deno.xz: the 64 MiB carry limit), and the
# built shim and shaders (build/). Then: run bench/gpu/run.sh there (see its header).
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo /.gl/ >>.git/info/exclude
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
mkdir -p .gl .gpu /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
# shellcheck disable=SC2086
apt-get $o update -qq
(cd .gl && apt-get $o download libvulkan1 >/dev/null)
deno_bin=$(command -v deno || true)
[ -n "$deno_bin" ] || deno_bin=$(npx -y deno@2.9.6 eval 'console.log(Deno.execPath())')
xz -T0 -9 -c "$(readlink -f "$deno_bin")" >.gpu/deno.xz
npx -y deno@2.9.6 task build
du -sh .gl .gpu build
echo 'carry: [".gl", ".gpu", "build"]; command: bash bench/gpu/run.sh'
