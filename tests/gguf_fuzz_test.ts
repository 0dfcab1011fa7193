/**
 * Mutation fuzzing of the GGUF header parser on the real stories260K.gguf: every mutated file
 * must either parse or fail with an HcError, quickly.
 */
import assert from "node:assert/strict";
import { HcError } from "../src/errors.ts";
import { openGguf, parseGgufHeader } from "../src/gguf/reader.ts";
import { mulberry32 } from "../testing/rng.ts";

const MODEL = new URL("../../shared/models/stories260K.gguf", import.meta.url);

async function loadModel(): Promise<Uint8Array> {
  try {
    return await Deno.readFile(MODEL);
  } catch {
    throw new Error(`test model file missing: ${MODEL.pathname} (see shared/models/README.md)`);
  }
}

const prng = mulberry32;

/** Offsets of every u64 count/length field and u32 type field in a GGUF v3 header. */
function headerFields(b: Uint8Array): { u64s: number[]; u32s: number[] } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u64s = [8, 16];
  const u32s = [4];
  let pos = 24;
  const str = () => {
    u64s.push(pos);
    pos += 8 + Number(v.getBigUint64(pos, true));
  };
  const sizes: Record<number, number> = {
    0: 1,
    1: 1,
    2: 2,
    3: 2,
    4: 4,
    5: 4,
    6: 4,
    7: 1,
    10: 8,
    11: 8,
    12: 8,
  };
  const value = (type: number) => {
    if (type === 8) str();
    else if (type === 9) {
      u32s.push(pos);
      const et = v.getUint32(pos, true);
      u64s.push(pos + 4);
      const n = Number(v.getBigUint64(pos + 4, true));
      pos += 12;
      for (let i = 0; i < n; i++) value(et);
    } else pos += sizes[type];
  };
  const nTensors = Number(v.getBigUint64(8, true));
  const nKv = Number(v.getBigUint64(16, true));
  for (let i = 0; i < nKv; i++) {
    str();
    u32s.push(pos);
    const t = v.getUint32(pos, true);
    pos += 4;
    value(t);
  }
  for (let i = 0; i < nTensors; i++) {
    str();
    u32s.push(pos);
    const nd = v.getUint32(pos, true);
    pos += 4;
    for (let d = 0; d < nd; d++) u64s.push(pos + 8 * d);
    pos += 8 * nd;
    u32s.push(pos);
    u64s.push(pos + 4);
    pos += 12;
  }
  return { u64s, u32s };
}

const HUGE_U64 = [
  0xffffffffffffffffn,
  1n << 63n,
  1n << 53n,
  (1n << 53n) + 1n,
  1n << 32n,
  0xffffffffn,
  0x7fffffffn,
  1n << 26n,
  (1n << 26n) + 1n,
  1n << 20n,
  1185376n,
  1185376n / 8n,
  100000n,
  0n,
  1n,
];

function mustBeHcError(e: unknown, what: string): asserts e is HcError {
  if (!(e instanceof HcError)) {
    throw new Error(`${what}: parser threw a non-HcError: ${e}`, { cause: e });
  }
}

Deno.test("fuzz: mutated stories260K.gguf headers parse or throw HcError", async () => {
  const orig = await loadModel();
  const header = parseGgufHeader(orig);
  const headerEnd = header.dataOffset;
  const { u64s, u32s } = headerFields(orig);
  assert.ok(u64s.length > 500, `expected many count fields, found ${u64s.length}`);
  const rand = prng(0x5eed);
  const pick = (n: number) => Math.floor(rand() * n);
  const work = new Uint8Array(orig.length);
  const outcomes = { ok: 0, error: 0 } as Record<string, number>;
  let slowestMs = 0;
  const t0 = performance.now();

  const attempt = (bytes: Uint8Array, fileSize: number, what: string) => {
    const start = performance.now();
    try {
      parseGgufHeader(bytes, fileSize);
      outcomes.ok++;
    } catch (e) {
      mustBeHcError(e, what);
      outcomes.error++;
      outcomes[e.code] = (outcomes[e.code] ?? 0) + 1;
    }
    slowestMs = Math.max(slowestMs, performance.now() - start);
  };

  const ITERATIONS = 4000;
  for (let it = 0; it < ITERATIONS; it++) {
    work.set(orig);
    const view = new DataView(work.buffer);
    const kind = it % 6;
    let what = `iteration ${it} kind ${kind}`;
    if (kind === 0) {
      // Random byte flips, mostly inside the header where the parser looks.
      const flips = 1 + pick(8);
      for (let i = 0; i < flips; i++) {
        const at = rand() < 0.9 ? pick(headerEnd + 64) : pick(work.length);
        work[at] ^= 1 << pick(8);
      }
      attempt(work, work.length, what);
    } else if (kind === 1) {
      const n = rand() < 0.8 ? pick(headerEnd + 64) : pick(work.length);
      what += ` truncate ${n}`;
      attempt(work.subarray(0, n), n, what);
    } else if (kind === 2) {
      const at = u64s[pick(u64s.length)];
      const val = HUGE_U64[pick(HUGE_U64.length)];
      what += ` u64@${at}=${val}`;
      view.setBigUint64(at, val, true);
      attempt(work, work.length, what);
    } else if (kind === 3) {
      const at = u32s[pick(u32s.length)];
      const val = [0, 1, 8, 9, 12, 13, 99, 0xffffffff, 2, 30, 31][pick(11)];
      what += ` u32@${at}=${val}`;
      view.setUint32(at, val, true);
      attempt(work, work.length, what);
    } else if (kind === 4) {
      // Inserted garbage, inside the header.
      const at = pick(headerEnd);
      const garbage = new Uint8Array(1 + pick(64));
      for (let i = 0; i < garbage.length; i++) garbage[i] = pick(256);
      const grown = new Uint8Array(orig.length + garbage.length);
      grown.set(orig.subarray(0, at));
      grown.set(garbage, at);
      grown.set(orig.subarray(at), at + garbage.length);
      what += ` insert ${garbage.length}@${at}`;
      attempt(grown, grown.length, what);
    } else {
      // Deleted bytes inside the header.
      const at = pick(headerEnd);
      const n = 1 + pick(32);
      const shrunk = new Uint8Array(orig.length - n);
      shrunk.set(orig.subarray(0, at));
      shrunk.set(orig.subarray(at + n), at);
      what += ` delete ${n}@${at}`;
      attempt(shrunk, shrunk.length, what);
    }
  }
  const totalMs = performance.now() - t0;
  console.log(
    `fuzz: ${ITERATIONS} mutations in ${totalMs.toFixed(0)} ms, slowest ${slowestMs.toFixed(1)} ms`,
    outcomes,
  );
  assert.equal(outcomes.ok + outcomes.error, ITERATIONS);
  assert.ok(outcomes.error > ITERATIONS / 4, "most mutations should be rejected");
  assert.ok(
    outcomes.E_GGUF_TRUNCATED > 0 && outcomes.E_GGUF_CORRUPT > 0 && outcomes.E_GGUF_TYPE > 0,
  );
  assert.ok(slowestMs < 2000, `one parse took ${slowestMs} ms`);
});

Deno.test("fuzz: mutated files through openGguf, reading every tensor that parses", async () => {
  const orig = await loadModel();
  const headerEnd = parseGgufHeader(orig).dataOffset;
  const rand = prng(0xf11e);
  const dir = await Deno.makeTempDir();
  let parsed = 0;
  try {
    for (let it = 0; it < 40; it++) {
      const bytes = orig.slice(0, it % 4 === 0 ? Math.floor(rand() * orig.length) : orig.length);
      for (let i = 0; i < 3; i++) {
        const at = Math.floor(rand() * Math.min(headerEnd, bytes.length));
        bytes[at] ^= 1 << Math.floor(rand() * 8);
      }
      const path = `${dir}/m${it}.gguf`;
      await Deno.writeFile(path, bytes);
      try {
        using f = await openGguf(path);
        parsed++;
        for (const t of f.tensors) {
          const dst = new Uint8Array(Math.min(t.bytes, 1 << 16));
          await f.readInto(t, dst);
          assert.deepEqual(dst, bytes.subarray(t.offset, t.offset + dst.length));
        }
      } catch (e) {
        mustBeHcError(e, `file iteration ${it}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  assert.ok(parsed > 0, "some lightly mutated files should still parse");
});
