/**
 * SVG line charts for the benchmark docs. Static SVG with no scripts and no web fonts is the one
 * format that renders the same on GitHub, in editors and offline, and keeping it dependency-free
 * keeps bench/all.ts runnable with nothing but Deno.
 */

export interface Series {
  name: string;
  points: [number, number][];
  dashed?: boolean;
}
export interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  xLog?: boolean;
  yLog?: boolean;
  yMin?: number;
  yMax?: number;
  series: Series[];
  width?: number;
  height?: number;
}

// Okabe-Ito stays distinguishable under the common colour-vision deficiencies. Yellow and black go
// last: yellow is faint on white and black reads as part of the axes.
const PALETTE = [
  "#0072B2",
  "#D55E00",
  "#009E73",
  "#CC79A7",
  "#E69F00",
  "#56B4E9",
  "#F0E442",
  "#000000",
];

const esc = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
// Two decimals are far below a pixel and keep the files small and diffable between bench runs.
const n2 = (v: number) => String(Math.round(v * 100) / 100 + 0);
// toPrecision(12) drops binary noise (0.1 * 3 = 0.30000000000000004); + 0 turns -0 into 0.
const clean = (v: number) => Number(v.toPrecision(12)) + 0;
const num = (v: number) => String(clean(v));
// Context sizes are powers of two, so "16K" is how people say them.
const size = (v: number) =>
  v >= 1048576 && v % 1048576 === 0
    ? `${v / 1048576}M`
    : v >= 1024 && v % 1024 === 0
    ? `${v / 1024}K`
    : num(v);

interface Axis {
  lo: number;
  hi: number;
  ticks: number[];
  log: boolean;
  label: (v: number) => string;
}

// A degenerate range (one value, or a fixed bound on the wrong side of the data) gets widened on
// the side the caller left free, so the chart still has an axis.
function widen(lo: number, hi: number, fixHi: boolean, log: boolean): [number, number] {
  if (hi > lo) return [lo, hi];
  if (!fixHi) return [lo, log ? lo * 10 : lo + (Math.abs(lo) || 1)];
  return [log ? hi / 10 : hi - (Math.abs(hi) || 1), hi];
}

// 1-2-5 steps; the free ends snap out to a step multiple so the axis ends on a labelled tick.
// Picks the step whose tick count is nearest 6, which lands in 4..8 for any range.
function linearAxis(lo0: number, hi0: number, fixLo: boolean, fixHi: boolean): Axis {
  const [lo, hi] = widen(lo0, hi0, fixHi, false);
  const e0 = Math.floor(Math.log10(hi - lo));
  let best = { score: Infinity, a: lo, b: hi, s: hi - lo };
  for (let e = e0 - 2; e <= e0 + 1; e++) {
    for (const m of [1, 2, 5]) {
      const s = m * 10 ** e;
      const a = fixLo ? lo : Math.floor(lo / s + 1e-9) * s,
        b = fixHi ? hi : Math.ceil(hi / s - 1e-9) * s;
      const n = Math.floor(b / s + 1e-9) - Math.ceil(a / s - 1e-9) + 1;
      const score = (n < 4 || n > 8 ? 100 : 0) + Math.abs(n - 6);
      if (score < best.score) best = { score, a, b, s };
    }
  }
  const { a, b, s } = best;
  const ticks: number[] = [];
  for (let k = Math.ceil(a / s - 1e-9); k <= Math.floor(b / s + 1e-9); k++) {
    ticks.push(clean(k * s));
  }
  return { lo: clean(a), hi: clean(b), ticks, log: false, label: num };
}

// Ticks at 1, 2, 5 per decade; past 10 ticks only the decades, or the labels would collide.
function log10Axis(lo0: number, hi0: number, fixLo: boolean, fixHi: boolean): Axis {
  const [lo, hi] = widen(lo0, hi0, fixHi, true);
  const cands: number[] = [];
  for (let e = Math.floor(Math.log10(lo)) - 1; e <= Math.ceil(Math.log10(hi)) + 1; e++) {
    for (const m of [1, 2, 5]) cands.push(clean(m * 10 ** e));
  }
  const a = fixLo ? lo : Math.max(...cands.filter((c) => c <= lo * (1 + 1e-9)));
  const b = fixHi ? hi : Math.min(...cands.filter((c) => c >= hi * (1 - 1e-9)));
  let ticks = cands.filter((c) => c >= a * (1 - 1e-9) && c <= b * (1 + 1e-9));
  if (ticks.length > 10) ticks = ticks.filter((t) => clean(10 ** Math.round(Math.log10(t))) === t);
  return { lo: a, hi: b, ticks, log: true, label: num };
}

export function lineChart(spec: ChartSpec): string {
  const W = spec.width ?? 640, H = spec.height ?? 400;
  const what = `lineChart "${spec.title}"`;
  if (!spec.series.length) throw new Error(`${what}: the series list is empty`);
  if (!(W >= 100 && H >= 100)) {
    throw new Error(`${what}: width and height must be >= 100, got ${W} x ${H}`);
  }
  if (spec.yMin !== undefined && spec.yMax !== undefined && !(spec.yMin < spec.yMax)) {
    throw new Error(`${what}: yMin (${spec.yMin}) must be below yMax (${spec.yMax})`);
  }
  const pts = spec.series.map((s) =>
    s.points.filter(([x]) => Number.isFinite(x)).sort((p, q) => p[0] - q[0])
  );
  const xs = pts.flat().map((p) => p[0]);
  const ys = pts.flat().map((p) => p[1]).filter(Number.isFinite);
  const badX = xs.find((x) => x <= 0),
    badY = [...ys, spec.yMin ?? 1, spec.yMax ?? 1].find((y) => y <= 0);
  if (spec.xLog && badX !== undefined) {
    throw new Error(`${what}: log x axis given x = ${badX} (must be > 0)`);
  }
  if (spec.yLog && badY !== undefined) {
    throw new Error(`${what}: log y axis given y = ${badY} (must be > 0)`);
  }

  let xAx: Axis;
  if (spec.xLog) {
    const ticks = [...new Set(xs)].sort((p, q) => p - q);
    if (!ticks.length) ticks.push(1);
    const [lo, hi] = widen(ticks[0], ticks[ticks.length - 1], false, true);
    xAx = { lo, hi, ticks, log: true, label: size };
  } else {
    xAx = xs.length
      ? linearAxis(Math.min(...xs), Math.max(...xs), false, false)
      : linearAxis(0, 1, false, false);
  }
  const dMin = ys.length ? Math.min(...ys) : spec.yLog ? 1 : 0,
    dMax = ys.length ? Math.max(...ys) : dMin;
  let yAx: Axis;
  if (spec.yLog) {
    yAx = log10Axis(
      spec.yMin ?? dMin,
      spec.yMax ?? dMax,
      spec.yMin !== undefined,
      spec.yMax !== undefined,
    );
  } else {
    const lo = spec.yMin ?? Math.min(0, dMin);
    yAx = linearAxis(
      lo,
      spec.yMax ?? dMax + 0.05 * (dMax - lo),
      spec.yMin !== undefined,
      spec.yMax !== undefined,
    );
  }

  // Margins shrink on small charts so the plot area never inverts; the legend sits on the right,
  // sized to the longest name, where it cannot cover data.
  const legendW = Math.min(W * 0.3, 44 + 7 * Math.max(...spec.series.map((s) => s.name.length)));
  const x0 = Math.min(64, W * 0.18),
    x1 = W - legendW - 12,
    y0 = Math.min(40, H * 0.12),
    y1 = H - Math.min(52, H * 0.16);
  // Inset so markers at the ends of the x range do not sit on the frame.
  const inset = Math.min(8, (x1 - x0) / 8);
  // Clamped: a caller's yMin/yMax may cut data off, and nothing may be drawn outside the frame.
  const frac = (ax: Axis, v: number) => {
    const f = ax.log ? Math.log : (t: number) => t;
    return Math.min(1, Math.max(0, (f(v) - f(ax.lo)) / (f(ax.hi) - f(ax.lo))));
  };
  const px = (v: number) => x0 + inset + (x1 - x0 - 2 * inset) * frac(xAx, v);
  const py = (v: number) => y1 - (y1 - y0) * frac(yAx, v);

  const o: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text class="title" x="${n2(W / 2)}" y="${
      n2(y0 / 2 + 5)
    }" text-anchor="middle" font-size="15" font-weight="bold">${esc(spec.title)}</text>`,
  ];
  for (const t of yAx.ticks) {
    const y = n2(py(t));
    o.push(
      `<line x1="${n2(x0)}" y1="${y}" x2="${n2(x1)}" y2="${y}" stroke="#e6e6e6"/>`,
      `<line x1="${n2(x0 - 5)}" y1="${y}" x2="${n2(x0)}" y2="${y}" stroke="#444"/>`,
      `<text class="tick-y" x="${n2(x0 - 8)}" y="${y}" dy="0.32em" text-anchor="end">${
        esc(yAx.label(t))
      }</text>`,
    );
  }
  for (const t of xAx.ticks) {
    const x = n2(px(t));
    o.push(
      `<line x1="${x}" y1="${n2(y1)}" x2="${x}" y2="${n2(y1 + 5)}" stroke="#444"/>`,
      `<text class="tick-x" x="${x}" y="${n2(y1 + 18)}" text-anchor="middle">${
        esc(xAx.label(t))
      }</text>`,
    );
  }
  o.push(
    `<rect class="plot" x="${n2(x0)}" y="${n2(y0)}" width="${n2(x1 - x0)}" height="${
      n2(y1 - y0)
    }" fill="none" stroke="#444"/>`,
    `<text class="axis-label" x="${n2((x0 + x1) / 2)}" y="${n2(H - 10)}" text-anchor="middle">${
      esc(spec.xLabel)
    }</text>`,
    `<text class="axis-label" transform="translate(14 ${
      n2((y0 + y1) / 2)
    }) rotate(-90)" text-anchor="middle">${esc(spec.yLabel)}</text>`,
  );
  spec.series.forEach((s, i) => {
    const colour = PALETTE[i % PALETTE.length], dash = s.dashed ? ` stroke-dasharray="6 4"` : "";
    const marks: string[] = [];
    let run: string[] = [];
    // A lone point between gaps has no line to draw; its marker still shows it.
    const flush = () => {
      if (run.length > 1) {
        o.push(
          `<polyline points="${
            run.join(" ")
          }" fill="none" stroke="${colour}" stroke-width="2"${dash}/>`,
        );
      }
      run = [];
    };
    for (const [x, y] of pts[i]) {
      if (!Number.isFinite(y)) { // an "n/a" cell: break the line rather than bridge the gap
        flush();
        continue;
      }
      run.push(`${n2(px(x))},${n2(py(y))}`);
      marks.push(`<circle cx="${n2(px(x))}" cy="${n2(py(y))}" r="3" fill="${colour}"/>`);
    }
    flush();
    o.push(...marks);
    const lx = x1 + 12, ly = y0 + 8 + 18 * i;
    o.push(
      `<line class="swatch" x1="${n2(lx)}" y1="${n2(ly)}" x2="${n2(lx + 22)}" y2="${
        n2(ly)
      }" stroke="${colour}" stroke-width="2"${dash}/>`,
      `<circle class="swatch" cx="${n2(lx + 11)}" cy="${n2(ly)}" r="3" fill="${colour}"/>`,
      `<text class="legend" x="${n2(lx + 28)}" y="${n2(ly)}" dy="0.32em">${esc(s.name)}</text>`,
    );
  });
  o.push("</svg>");
  return o.join("\n") + "\n";
}

// Groups in first-appearance order, so series order (hence colour) follows the result file.
function groupBy<T>(xs: T[], key: (x: T) => string): Map<string, T[]> {
  const m = new Map<string, T[]>();
  for (const x of xs) m.set(key(x), [...(m.get(key(x)) ?? []), x]);
  return m;
}

/** One chart per model (models without cells are left out): agreement (%) vs keep, a series per policy. */
export function fidelityCharts(r: {
  models: { id: string }[];
  cells: {
    model: string;
    policy: string;
    keep: number | null;
    status: string;
    agreement: number | null;
  }[];
}): { model: string; svg: string }[] {
  return r.models.flatMap(({ id }) => {
    const cells = r.cells.filter((c) => c.model === id);
    if (!cells.length) return [];
    const keeps = cells.map((c) => c.keep).filter((k): k is number => k !== null);
    const kLo = keeps.length ? Math.min(...keeps) : 0, kHi = keeps.length ? Math.max(...keeps) : 1;
    const pct = (c: { status: string; agreement: number | null }) =>
      c.status === "ok" && c.agreement !== null ? c.agreement * 100 : NaN;
    const series = [...groupBy(cells, (c) => c.policy)].map(([policy, cs]): Series => {
      const kept = cs.filter((c) => c.keep !== null);
      // The full cache has no keep: drawn as the reference level the policies are measured against.
      if (!kept.length) {
        return { name: policy, dashed: true, points: [[kLo, pct(cs[0])], [kHi, pct(cs[0])]] };
      }
      return { name: policy, points: kept.map((c) => [c.keep as number, pct(c)]) };
    });
    // Agreement ends at 100%; the axis starts 5 points below the worst cell (a multiple of 5),
    // since the policies differ by a few points and a 0..100 axis flattens them into one line.
    const worst = Math.min(
      ...series.flatMap((x) => x.points.map((pt) => pt[1]).filter(Number.isFinite)),
    );
    const svg = lineChart({
      title: `Next-token agreement vs keep: ${id}`,
      xLabel: "keep (fraction of the KV cache)",
      yLabel: "next-token agreement (%)",
      yMin: Number.isFinite(worst) ? Math.max(0, Math.min(90, Math.floor(worst / 5) * 5 - 5)) : 0,
      yMax: 100,
      series,
    });
    return [{ model: id, svg }];
  });
}

/** One chart per shape (shapes without cells are left out): mean step time (ms, log; the
 * median where a cell has no mean) vs context (log2). */
export function speedCharts(r: {
  shapes: { id: string; label: string }[];
  cells: {
    shape: string;
    engine: string;
    context: number;
    stepMs: number | null;
    meanMs?: number;
  }[];
}): { shape: string; svg: string }[] {
  return r.shapes.flatMap(({ id, label }) => {
    const cells = r.cells.filter((c) => c.shape === id);
    if (!cells.length) return [];
    const series = [...groupBy(cells, (c) => c.engine)].map(([engine, cs]): Series => ({
      name: engine,
      // llama.cpp is the external baseline, not one of our engines: dashed sets it apart.
      dashed: engine.startsWith("llama.cpp"),
      points: cs.map((c) => [c.context, c.stepMs === null ? NaN : c.meanMs ?? c.stepMs]),
    }));
    const svg = lineChart({
      title: `Decode step time: ${label}`,
      xLabel: "context (tokens)",
      yLabel: "mean decode step (ms)",
      xLog: true,
      yLog: true,
      series,
    });
    return [{ shape: id, svg }];
  });
}
