#!/usr/bin/env bash
# Run here (x86-64, registry access) before a device session: puts what the GPU box lacks into
# ignored folders that the device tool carries: the Vulkan loader (.gl/, per the device
# README), Deno as an xz-compressed binary (.gpu/deno.xz: the 64 MiB carry limit), the npm
# packages the runs import (.gpu/denodir, a DENO_DIR holding only those, with
# .gpu/import_map.json: the box reaches no registry, and deno.json's full dependency list would
# have Deno fetch test-only packages too), and the built shim and shaders (build/). Then run
# bench/gpu/run.sh there (see its header).
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gl .gpu /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
# shellcheck disable=SC2086
apt-get $o update -qq
(cd .gl && apt-get $o download libvulkan1 >/dev/null)
deno_bin=$(command -v deno || true)
[ -n "$deno_bin" ] || deno_bin=$(npx -y deno@2.9.6 eval 'console.log(Deno.execPath())')
xz -T0 -9 -c "$(readlink -f "$deno_bin")" >.gpu/deno.xz
python3 -c 'import json; json.dump({"imports": json.load(open("deno.json"))["imports"]}, open(".gpu/import_map.json", "w"))'
rm -rf .gpu/denodir
DENO_DIR=$PWD/.gpu/denodir "$deno_bin" cache --no-config --no-lock --node-modules-dir=none \
  --import-map .gpu/import_map.json src/cli.ts bench/kernels.ts bench/decode.ts bench/prefill.ts \
  tests/vk_runtime_test.ts tests/kernels_*_test.ts tests/model_test.ts tests/engine_test.ts \
  tests/variants_test.ts
"$deno_bin" task build
# llama.cpp's Vulkan backend for the side-by-side runs: node-llama-cpp's JS and its Vulkan
# prebuilt only (not the CUDA, arm or CPU prebuilts, nor the llama.cpp source bundle), which
# run.sh unpacks into bench/llamacpp/ and runs under Deno (the box has no Node).
[ -d bench/llamacpp/node_modules/node-llama-cpp ] ||
  (cd bench/llamacpp && npm install --no-audit --no-fund)
tar -C bench/llamacpp -cf - --exclude='node_modules/@node-llama-cpp/linux-x64-cuda*' \
  --exclude='node_modules/@node-llama-cpp/linux-arm*' \
  --exclude='node_modules/@node-llama-cpp/linux-x64' \
  --exclude='node_modules/node-llama-cpp/llama/gitRelease.bundle' node_modules |
  xz -T0 -9 >.gpu/llamacpp.tar.xz
# The sweep's 8B-shaped model uses the official Llama-3.1-8B profile from ../shared, which the
# box does not get (only the checkout travels): run.sh links ../shared to this copy there.
mkdir -p .gpu/shared/profiles .gpu/shared/models/babyllama-tok105
cp ../shared/profiles/Head_Analysis_llama-3.1-8b-instruct_topk1024_th0.5_sim0.5_step5000.json \
  .gpu/shared/profiles/
# The whole-model tests' real models (about 5 MB).
cp ../shared/models/stories260K.gguf ../shared/models/stories260K.bin ../shared/models/tok512.bin \
  ../shared/models/stories260K.greedy-n200.txt .gpu/shared/models/
cp ../shared/models/babyllama-tok105/* .gpu/shared/models/babyllama-tok105/
du -sh .gl .gpu build
echo 'carry: [".gl", ".gpu", "build"]; command: bash bench/gpu/run.sh'
