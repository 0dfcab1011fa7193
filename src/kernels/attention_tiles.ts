/**
 * The tile shape of the GPU prefill attention (shaders/attn_prefill.comp), chosen from the
 * device: its shared memory, its workgroup size limit, its subgroup size and whether kernels use
 * subgroup operations (Device.subgroups, which picks the shader's `__sg` twin).
 */
import { HcError } from "../errors.ts";
import type { Device } from "../vk/mod.ts";

export interface PrefillTileShape {
  /** Query rows (token x query head) per workgroup. */
  rows: number;
  /** Keys per tile. */
  keys: number;
  /** Rows per row group, and the lanes that own a row group. */
  rowsPerGroup: number;
  lanesPerGroup: number;
  workgroupSize: number;
  /** Shared memory the kernel declares. */
  sharedBytes: number;
  /** The shader's `__sg` twin: row reductions and probabilities by subgroup shuffles. */
  subgroup: boolean;
}

/** Tiles in order of preference: the largest that fits the device's shared memory. 64 x 64
 * needs 32 KiB at head dim 128 with subgroups (queries and one K/V tile, f16), 48 KiB without
 * (plus the f32 score tile). */
const CANDIDATES: readonly (readonly [number, number])[] = [
  [64, 64],
  [64, 32],
  [32, 64],
  [32, 32],
  [32, 16],
  [16, 16],
  [16, 8],
];

/** Lanes per row group: 8 keeps a row group inside one subgroup on every device this runs on
 * (lavapipe's subgroups are 8 lanes; GPUs' 16 to 128). */
const MAX_LANES = 8;

export function prefillTileShape(
  device: Device,
  headDim: number,
  groupSize: number,
): PrefillTileShape {
  const info = device.info;
  const sg = Math.max(1, info.subgroupSize);
  const subgroup = device.subgroups && (sg & (sg - 1)) === 0;
  const lanes = subgroup ? Math.min(MAX_LANES, sg) : MAX_LANES;
  const maxWg = info.maxComputeWorkGroupInvocations;
  for (const [rows, keys] of CANDIDATES) {
    if (rows < groupSize || keys % lanes !== 0) continue;
    const sharedBytes = (rows + keys) * headDim * 2 + (subgroup ? 0 : rows * keys * 4);
    if (sharedBytes > info.maxComputeSharedMemoryBytes) continue;
    // Two rows per group where the workgroup allows it; four halve the workgroup.
    for (const rowsPerGroup of [2, 4]) {
      const workgroupSize = rows / rowsPerGroup * lanes;
      // A workgroup of whole subgroups (the shuffles need every lane of a row group).
      if (workgroupSize > maxWg || (subgroup && workgroupSize % sg !== 0)) continue;
      return {
        rows,
        keys,
        rowsPerGroup,
        lanesPerGroup: lanes,
        workgroupSize,
        sharedBytes,
        subgroup,
      };
    }
  }
  throw new HcError(
    "E_VK_LIMIT",
    `prefill attention: no tile for head dim ${headDim} x ${groupSize} query heads fits ` +
      `${info.maxComputeSharedMemoryBytes} bytes of shared memory`,
  );
}

/** The shader's swizzle mask: the largest power of two dividing headDim / 8, at most 8, less 1. */
export function swizzleMask(headDim: number): number {
  const d8 = headDim / 8;
  return Math.min(8, d8 & -d8) - 1;
}
