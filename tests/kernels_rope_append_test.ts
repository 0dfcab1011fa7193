/**
 * RopeAppend (shaders/rope_append.comp): RoPE on q and k and the KV append in one dispatch,
 * against what it replaces, run side by side on the same random data: rope.comp on q and k,
 * YaRN's scale, then kv_append.comp. Both pairings, several tokens, a cache split over two
 * chunks with a head that overflows its capacity, and a ring (sliding-window) cache.
 */
import assert from "node:assert/strict";
import { type Buffer, Device } from "../src/vk/mod.ts";
import { Rope, RopeTable } from "../src/kernels/elementwise.ts";
import { KvAppend, RopeAppend } from "../src/kernels/kv.ts";
import { KvLayerCache } from "../src/cache/kv_layer.ts";
import { randomF32 } from "./helpers.ts";

const SEED = Date.now() >>> 0;
const D = 32, nHeads = 6, nKv = 3, B = 3;

function upload(dev: Device, data: Float32Array): Buffer {
  const b = dev.buffer(data.byteLength);
  dev.upload(b, data);
  return b;
}

function download(dev: Device, b: Buffer, n: number): Float32Array {
  const bytes = dev.download(b, 0, n * 4);
  return new Float32Array(bytes.buffer, bytes.byteOffset, n).slice();
}

/** Every row of every head, K then V, as f16 bits. */
function cacheRows(dev: Device, cache: KvLayerCache, caps: number[]): Uint16Array[] {
  const out: Uint16Array[] = [];
  caps.forEach((cap, h) => {
    for (const which of ["k", "v"] as const) {
      const loc = cache.location(h, 0);
      const bytes = dev.download(which === "k" ? loc.k : loc.v, loc.byteOffset, cap * D * 2);
      out.push(new Uint16Array(bytes.buffer, bytes.byteOffset, cap * D).slice());
    }
  });
  return out;
}

for (const window of [0, 4]) {
  for (const pairing of ["adjacent", "halves"] as const) {
    for (const mscale of [1, 1.25]) {
      Deno.test(`rope + append in one kernel equals rope, scale, append: ${pairing}, mscale ${mscale}, ${window ? "ring" : "rows"}`, () => {
        using dev = Device.open();
        using rope = new Rope(dev);
        using append = new KvAppend(dev, { headDim: D });
        using fused = new RopeAppend(dev, { headDim: D });
        using table = RopeTable.create(dev, { headDim: D, base: 10000 });
        const caps = window ? [window, window, window] : [5, 10, 20];
        // Heads 0 and 1 share chunk 0, head 2 gets chunk 1 (rows cases); head 0 (capacity 5)
        // takes only the first token: the kernel must not spill into head 1.
        const lengths = window ? [9, 9, 9] : [6, 5, 2];
        const make = () => {
          const c = KvLayerCache.create(dev, {
            headDim: D,
            capRows: caps,
            maxChunkBytes: Math.max(...caps) * D * 2,
            window,
          });
          // Rows never written must compare equal too: zero both caches first.
          using cmd = dev.commands();
          cmd.begin();
          for (const b of [...c.k, ...c.v]) cmd.fill(b, 0, b.bytes, 0);
          cmd.end();
          dev.waitSync("compute", cmd.submit());
          c.lengths.set(lengths);
          dev.upload(c.lengthsWindow.buffer, c.lengths, c.lengthsWindow.offset);
          return c;
        };
        using want = make();
        using got = make();
        assert.equal(got.layout.chunkHeads.length > 1, true);
        const q = randomF32(B * nHeads * D, SEED + 1, 3);
        const k = randomF32(B * nKv * D, SEED + 2, 3);
        const v = randomF32(B * nKv * D, SEED + 3, 3);
        using pos = dev.buffer(4, "upload");
        new Uint32Array(pos.mapped().buffer).set([70001]);
        using qa = upload(dev, q), ka = upload(dev, k), va = upload(dev, v);
        using qb = upload(dev, q), kb = upload(dev, k), vb = upload(dev, v);
        const run = (record: (cmd: ReturnType<Device["commands"]>) => void) => {
          using cmd = dev.commands();
          cmd.begin();
          record(cmd);
          cmd.end();
          dev.waitSync("compute", cmd.submit());
        };
        const common = { table, positions: pos, nTokens: B, headDim: D, pairing };
        run((cmd) => {
          rope.record(cmd, { ...common, x: qa, nHeads });
          rope.record(cmd, { ...common, x: ka, nHeads: nKv });
        });
        if (mscale !== 1) {
          // YaRN's scale, as the separate path applies it (f32 products).
          const scale = (b: Buffer, n: number) => {
            const x = download(dev, b, n).map((y) => Math.fround(y * mscale));
            dev.upload(b, x);
          };
          scale(qa, q.length);
          scale(ka, k.length);
        }
        run((cmd) => append.record(cmd, { cache: want, k: ka, v: va, tokens: B }));
        run((cmd) =>
          fused.record(cmd, {
            cache: got,
            q: qb,
            k: kb,
            v: vb,
            nHeads,
            tokens: B,
            table,
            positions: pos,
            pairing,
            mscale,
          })
        );
        const what = `(seed ${SEED})`;
        assert.deepEqual(download(dev, qb, q.length), download(dev, qa, q.length), `q ${what}`);
        assert.deepEqual(download(dev, kb, k.length), download(dev, ka, k.length), `k ${what}`);
        const gr = cacheRows(dev, got, caps), wr = cacheRows(dev, want, caps);
        gr.forEach((rows, i) =>
          assert.deepEqual(rows, wr[i], `head ${i >> 1} ${i & 1 ? "v" : "k"} rows ${what}`)
        );
      });
    }
  }
}

Deno.test("rope + append refuses a table of another head size and a batch larger than a ring", () => {
  using dev = Device.open();
  using fused = new RopeAppend(dev, { headDim: D });
  using table = RopeTable.create(dev, { headDim: 2 * D, base: 10000 });
  using ring = KvLayerCache.create(dev, { headDim: D, capRows: [4, 4, 4], window: 4 });
  using buf = dev.buffer(64 * 1024);
  using pos = dev.buffer(4, "upload");
  using cmd = dev.commands();
  cmd.begin();
  const args = {
    cache: ring,
    q: buf,
    k: buf,
    v: buf,
    nHeads,
    tokens: 2,
    table,
    positions: pos,
    pairing: "adjacent" as const,
  };
  assert.throws(() => fused.record(cmd, args), /RoPE table has 32 pairs/);
  using good = RopeTable.create(dev, { headDim: D, base: 10000 });
  assert.throws(() => fused.record(cmd, { ...args, table: good, tokens: 5 }), /ring of 4 rows/);
  cmd.end();
});
