#!/usr/bin/env bash
# Runs on the GPU box (device tool): the kernel tests, the whole-model tests under the "gpu"
# kernel variants (HC_VK_VARIANTS=gpu: the kernels a discrete GPU takes, on the small real
# models prepare.sh copies), then the kernel-bandwidth benchmark (with the dispatch and barrier
# counts per decode token), the prefill benchmark and the decode-speed sweep on the real driver, all in one
# command that fits a 10-minute call. llama.cpp's Vulkan backend runs beside ours in the prefill
# bench and in the sweep (up to 16K): node-llama-cpp with only its Vulkan prebuilt, packed by
# prepare.sh (.gpu/llamacpp.tar.xz, about 13 MB), under this Deno (Node does not fit the carry;
# bench/llamacpp_node.ts takes Deno where Node is absent). Results land in
# $OUT (kernels.json, prefill.json, speed.json, gpu.log; the test summary is in gpu.log); back
# here, `deno run -A bench/gpu/collect.ts DIR`
# (DIR: where the device tool put them) files them in bench/results/gpu/ and writes
# docs/results-gpu.md beside docs/results-lavapipe.md.
# Prepare first with bench/gpu/prepare.sh; call with carry [".gl", ".gpu", "build"].
# HC_GPU_CONTEXTS overrides the sweep's contexts. A dry run here, offline and on lavapipe:
#   HC_GPU_CONTEXTS=1024,16384 OUT=/tmp/out unshare -n bash bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
mkdir -p /tmp/deno && xz -dc .gpu/deno.xz >/tmp/deno/deno && chmod +x /tmp/deno/deno
export PATH=/tmp/deno:$PATH NO_COLOR=1 DENO_DIR=$PWD/.gpu/denodir
# Offline: only the packages prepare.sh cached, resolved through the import map.
off=(--cached-only --no-config --no-lock --node-modules-dir=none --import-map .gpu/import_map.json)
[ -e ../shared ] || ln -s "$PWD/.gpu/shared" ../shared
xz -dc .gpu/llamacpp.tar.xz | tar -C bench/llamacpp -xf -
# The whole-model tests (prepare.sh caches their imports; they read ../shared/models).
WHOLE_MODEL_TESTS=(tests/model_test.ts tests/engine_test.ts tests/variants_test.ts)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
{
  deno run "${off[@]}" -A src/cli.ts devices
  timeout 150 deno test "${off[@]}" -A --parallel tests/vk_runtime_test.ts tests/kernels_*_test.ts
  echo "== whole-model tests, HC_VK_VARIANTS=gpu"
  HC_VK_VARIANTS=gpu timeout 150 deno test "${off[@]}" -A --parallel "${WHOLE_MODEL_TESTS[@]}"
  timeout 120 deno run "${off[@]}" -A bench/kernels.ts --write
  timeout 90 deno run "${off[@]}" -A bench/prefill.ts --write --tokens 512,2048 --llamacpp vulkan
  timeout 270 deno run "${off[@]}" -A bench/decode.ts --write --skip-throughput \
    --llamacpp-max 16384 --llamacpp-backends vulkan \
    --contexts "${HC_GPU_CONTEXTS:-1024,4096,16384,65536,131072}" --steps 32
} 2>&1 | tee "$OUT/gpu.log"
cp bench/results/kernels.json bench/results/prefill.json bench/results/speed.json "$OUT/" 2>/dev/null
