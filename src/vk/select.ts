/** Host-side ranking in the native shim (vk-native/select.c), off the JS thread. */
import { HcError } from "../errors.ts";
import { check, native } from "./ffi.ts";

/**
 * For each cap, the `cap` positions of `row` ranked first by the top-k kernel's order (score
 * descending, NaN lowest, -0 as +0, then position ascending), ascending by position: the
 * kernel's top-k followed by the cache's takeByScore, in C on a worker thread, so that several
 * rows rank at once while the JS thread waits. `row` must not change until it settles.
 */
export async function rankRows(row: Float32Array, caps: readonly number[]): Promise<Uint32Array[]> {
  if (caps.some((c) => !Number.isInteger(c) || c < 0 || c > 0xffffffff)) {
    throw new HcError("E_VK_LIMIT", `rankRows: caps must be u32 counts, got ${caps.join(", ")}`);
  }
  const n = row.length;
  const sizes = caps.map((c) => Math.min(c, n));
  const out = new Uint32Array(Math.max(1, sizes.reduce((a, b) => a + b, 0)));
  check(
    await native().hc_select_rows(row, n, Uint32Array.from(caps), caps.length, out),
    `ranking a row of ${n} scores`,
  );
  let at = 0;
  return sizes.map((s) => out.subarray(at, at += s));
}
