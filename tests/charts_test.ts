/**
 * The benchmark-doc chart renderer: well-formed standalone SVG, nice and log tick labels, NaN
 * gaps, escaping, bounds, input errors, and the fidelity / speed result adapters.
 */
import assert from "node:assert/strict";
import { type ChartSpec, fidelityCharts, lineChart, speedCharts } from "../bench/charts.ts";

interface El {
  name: string;
  attrs: Record<string, string>;
  text: string;
}

/** A strict little XML reader: balanced tags, quoted attributes, no stray markup characters. */
function parse(svg: string): El[] {
  const els: El[] = [];
  const stack: El[] = [];
  const re = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<>]*")*)\s*(\/?)>|([^<]+)/g;
  let at = 0;
  for (const m of svg.matchAll(re)) {
    assert.equal(m.index, at, `unparseable markup at ${at}: ${svg.slice(at, at + 40)}`);
    at = m.index + m[0].length;
    if (m[5] !== undefined) {
      assert.doesNotMatch(m[5], />|&(?!(amp|lt|gt|quot|#\d+);)/, `raw markup in text: ${m[5]}`);
      if (stack.length) stack[stack.length - 1].text += m[5];
      else assert.match(m[5], /^\s*$/, "text outside the root element");
      continue;
    }
    const [, close, name, attrText, selfClose] = m;
    if (close) {
      assert.equal(stack.pop()?.name, name, `unbalanced </${name}>`);
      continue;
    }
    assert.ok(stack.length || !els.length, "more than one root element");
    const attrs: Record<string, string> = {};
    for (const a of attrText.matchAll(/([\w:-]+)="([^"]*)"/g)) attrs[a[1]] = a[2];
    const el = { name, attrs, text: "" };
    els.push(el);
    if (!selfClose) stack.push(el);
  }
  assert.equal(at, svg.length, "trailing garbage");
  assert.equal(stack.length, 0, `unclosed <${stack.map((e) => e.name).join(">, <")}>`);
  assert.equal(els[0]?.name, "svg");
  return els;
}

const unescape = (s: string) =>
  s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"').replace(/&amp;/g, "&");
const texts = (els: El[], cls: string) =>
  els.filter((e) => e.name === "text" && e.attrs.class === cls).map((e) => unescape(e.text));
const count = (els: El[], name: string) => els.filter((e) => e.name === name).length;
const polylines = (els: El[]) =>
  els.filter((e) => e.name === "polyline").map((e) =>
    e.attrs.points.split(" ").map((p) => p.split(",").map(Number) as [number, number])
  );

const base = (over: Partial<ChartSpec> = {}): ChartSpec => ({
  title: "t",
  xLabel: "x",
  yLabel: "y",
  series: [{ name: "a", points: [[0, 0], [0.5, 0.7], [1, 1]] }, {
    name: "b",
    points: [[0, 0.2], [0.5, 0.4], [1, 0.3]],
  }],
  ...over,
});

Deno.test("a standalone, well-formed SVG: a polyline per series, markers, legend, labels", () => {
  const svg = lineChart(base({ title: "Agreement", xLabel: "keep", yLabel: "agree" }));
  const els = parse(svg);
  assert.equal(els[0].attrs.xmlns, "http://www.w3.org/2000/svg");
  assert.equal(els[0].attrs["font-family"], "sans-serif");
  assert.equal(els[0].attrs.width, "640");
  assert.equal(els[0].attrs.height, "400");
  assert.doesNotMatch(svg, /<script|@import|href=|url\(/);
  assert.equal(count(els, "polyline"), 2);
  assert.equal(count(els, "circle"), 6 + 2); // a marker per point + a legend swatch each
  assert.deepEqual(texts(els, "legend"), ["a", "b"]);
  assert.deepEqual(texts(els, "title"), ["Agreement"]);
  assert.deepEqual(texts(els, "axis-label"), ["keep", "agree"]);
  // Swatch and line share the palette colour, and different series get different ones.
  const [pa, pb] = els.filter((e) => e.name === "polyline").map((e) => e.attrs.stroke);
  assert.notEqual(pa, pb);
  const swatches = els.filter((e) => e.name === "line" && e.attrs.class === "swatch");
  assert.deepEqual(swatches.map((e) => e.attrs.stroke), [pa, pb]);
});

Deno.test("every number in the SVG has at most 2 decimals", () => {
  const els = parse(
    lineChart(base({ series: [{ name: "s", points: [[1 / 3, 2 / 7], [0.9, 1 / 9]] }] })),
  );
  for (const e of els) {
    for (const [k, v] of Object.entries(e.attrs)) {
      for (const n of v.match(/-?\d+(\.\d+)?/g) ?? []) {
        if (k !== "fill" && k !== "stroke") assert.match(n, /^-?\d+(\.\d{1,2})?$/, `${k}="${v}"`);
      }
    }
  }
});

function assertNice(labels: string[]) {
  assert.ok(labels.length >= 4 && labels.length <= 8, `tick count ${labels.length}: ${labels}`);
  for (const l of labels) assert.match(l, /^-?\d+(\.\d{1,4})?$/, `noisy label ${l}`);
  const v = labels.map(Number);
  const step = v[1] - v[0];
  const mant = step / 10 ** Math.floor(Math.log10(step) + 1e-9);
  assert.ok([1, 2, 5].some((m) => Math.abs(mant - m) < 1e-6), `step ${step} is not 1-2-5`);
  for (let i = 1; i < v.length; i++) assert.ok(Math.abs(v[i] - v[i - 1] - step) < step * 1e-6);
}

Deno.test("linear ticks are 4-8 nice 1-2-5 numbers without float noise", () => {
  const els = parse(lineChart(base()));
  const y = texts(els, "tick-y"), x = texts(els, "tick-x");
  assertNice(y);
  assertNice(x);
  assert.equal(y[0], "0"); // linear y starts at 0
  assert.ok(Number(y[y.length - 1]) >= 1);
  assert.deepEqual(x, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
  for (const [lo, hi] of [[0, 0.3], [0, 7], [-3, 12], [0.1, 0.5], [0, 123456], [5, 5], [0, 0]]) {
    const s = lineChart(base({ series: [{ name: "s", points: [[lo, lo], [hi, hi]] }] }));
    const ys = texts(parse(s), "tick-y");
    assertNice(ys);
    assertNice(texts(parse(s), "tick-x"));
    if (lo < 0) assert.ok(Number(ys[0]) <= lo, "negative data gets a negative axis");
  }
});

Deno.test("log2 x ticks sit at the data's contexts and read 1K, 4K, 16K, 64K", () => {
  const pts: [number, number][] = [[65536, 40], [1024, 2], [4096, 5], [16384, 12]];
  const els = parse(lineChart(base({ xLog: true, series: [{ name: "s", points: pts }] })));
  assert.deepEqual(texts(els, "tick-x"), ["1K", "4K", "16K", "64K"]);
  const big = parse(
    lineChart(
      base({ xLog: true, series: [{ name: "s", points: [[2048, 1], [1048576, 2], [1000, 3]] }] }),
    ),
  );
  assert.deepEqual(texts(big, "tick-x"), ["1000", "2K", "1M"]);
  // Equal context ratios are equal distances on a log2 axis.
  const [line] = polylines(els);
  const dx = line.slice(1).map(([x], i) => x - line[i][0]);
  for (const d of dx) assert.ok(Math.abs(d - dx[0]) < 0.05, `${dx}`);
});

Deno.test("log10 y ticks are 1-2-5 per decade, decades only over a wide span", () => {
  const els = parse(
    lineChart(base({ yLog: true, series: [{ name: "s", points: [[1, 0.3], [2, 4], [3, 40]] }] })),
  );
  assert.deepEqual(texts(els, "tick-y"), ["0.2", "0.5", "1", "2", "5", "10", "20", "50"]);
  const wide = parse(
    lineChart(base({ yLog: true, series: [{ name: "s", points: [[1, 0.001], [2, 1000]] }] })),
  );
  assert.deepEqual(texts(wide, "tick-y"), ["0.001", "0.01", "0.1", "1", "10", "100", "1000"]);
});

Deno.test("a NaN point splits its series into two polylines; x values are sorted", () => {
  const pts: [number, number][] = [[5, 4], [1, 1], [3, NaN], [2, 2], [4, 3]];
  const els = parse(lineChart(base({ series: [{ name: "s", points: pts }] })));
  const lines = polylines(els);
  assert.equal(lines.length, 2);
  assert.deepEqual(lines.map((l) => l.length), [2, 2]);
  assert.equal(count(els, "circle"), 4 + 1);
  const xs = lines.flat().map(([x]) => x);
  assert.deepEqual(xs, [...xs].sort((a, b) => a - b));
  // A lone point between gaps keeps its marker but has no line.
  const lone = parse(
    lineChart(base({ series: [{ name: "s", points: [[1, NaN], [2, 1], [3, NaN]] }] })),
  );
  assert.equal(count(lone, "polyline"), 0);
  assert.equal(count(lone, "circle"), 1 + 1);
});

Deno.test("title, labels and series names are XML-escaped", () => {
  const svg = lineChart(base({
    title: `a<&>"b`,
    xLabel: "x & y",
    series: [{ name: "<policy>", points: [[1, 1], [2, 2]] }],
  }));
  assert.match(svg, /a&lt;&amp;&gt;&quot;b/);
  assert.doesNotMatch(svg, /<policy>|a<&/);
  const els = parse(svg);
  assert.deepEqual(texts(els, "title"), [`a<&>"b`]);
  assert.deepEqual(texts(els, "legend"), ["<policy>"]);
  assert.equal(texts(els, "axis-label")[0], "x & y");
});

Deno.test("bad input throws a clear error", () => {
  assert.throws(() => lineChart(base({ series: [] })), /series list is empty/);
  const s = (points: [number, number][]) => [{ name: "s", points }];
  assert.throws(
    () => lineChart(base({ xLog: true, series: s([[0, 1], [2, 2]]) })),
    /log x axis.*x = 0/,
  );
  assert.throws(
    () => lineChart(base({ yLog: true, series: s([[1, -1], [2, 2]]) })),
    /log y axis.*y = -1/,
  );
  assert.throws(() => lineChart(base({ yLog: true, yMin: 0 })), /log y axis/);
  assert.throws(() => lineChart(base({ width: 99 })), /width and height must be >= 100/);
  assert.throws(() => lineChart(base({ height: 50 })), /width and height must be >= 100/);
  assert.throws(() => lineChart(base({ yMin: 2, yMax: 1 })), /yMin/);
  // NaN on a log axis is a missing cell, not an error.
  parse(lineChart(base({ yLog: true, series: s([[1, NaN], [2, 2]]) })));
});

Deno.test("all coordinates stay inside the plot area, even where yMin/yMax cut the data", () => {
  const specs: ChartSpec[] = [
    base(),
    base({ width: 100, height: 100 }),
    base({ yMin: 0.25, yMax: 0.5 }),
    base({ xLog: true, yLog: true, series: [{ name: "s", points: [[1024, 0.5], [65536, 800]] }] }),
    base({ series: [{ name: "n", points: [[-4, -2], [0, 3], [9, -7]] }] }),
    base({
      width: 300,
      height: 150,
      series: [{ name: "a long series name ".repeat(4), points: [[0, 1], [1, 2]] }],
    }),
  ];
  for (const spec of specs) {
    const els = parse(lineChart(spec));
    const plot = els.find((e) => e.name === "rect" && e.attrs.class === "plot")!;
    const [x0, y0] = [Number(plot.attrs.x), Number(plot.attrs.y)];
    const [x1, y1] = [x0 + Number(plot.attrs.width), y0 + Number(plot.attrs.height)];
    assert.ok(x1 - x0 > 10 && y1 - y0 > 10, "plot area collapsed");
    const circles = els.filter((e) => e.name === "circle" && e.attrs.class !== "swatch").map((
      e,
    ) => [Number(e.attrs.cx), Number(e.attrs.cy)]);
    const pts = [...polylines(els).flat(), ...circles];
    assert.ok(pts.length > 0);
    for (const [x, y] of pts) {
      assert.ok(
        x >= x0 && x <= x1 && y >= y0 && y <= y1,
        `(${x}, ${y}) outside ${[x0, y0, x1, y1]}`,
      );
    }
  }
});

Deno.test("the Okabe-Ito palette cycles by series index", () => {
  const series = Array.from(
    { length: 9 },
    (_, i) => ({ name: `s${i}`, points: [[0, i], [1, i + 1]] as [number, number][] }),
  );
  const strokes = parse(lineChart(base({ series }))).filter((e) => e.name === "polyline").map((e) =>
    e.attrs.stroke
  );
  assert.equal(new Set(strokes.slice(0, 8)).size, 8);
  assert.equal(strokes[8], strokes[0]);
  assert.ok(strokes.includes("#0072B2") && strokes.includes("#E69F00"));
});

Deno.test("fidelityCharts: a chart per model, a series per policy, full as a dashed reference", () => {
  const cell = (
    model: string,
    policy: string,
    keep: number | null,
    agreement: number,
    status = "ok",
  ) => ({
    model,
    policy,
    keep,
    status,
    agreement,
  });
  const r = {
    models: [{ id: "m1" }, { id: "m2" }, { id: "m3" }],
    cells: [
      cell("m1", "full", null, 1),
      ...[0.1, 0.25, 0.5].flatMap((
        k,
      ) => [cell("m1", "snapkv", k, 0.8 + k / 4), cell("m1", "heterocache", k, 0.9 + k / 5)]),
      cell("m1", "streaming", 0.1, 0.5),
      cell("m1", "streaming", 0.25, 0, "error"),
      cell("m1", "streaming", 0.5, 0.7),
      cell("m2", "full", null, 0.98),
      cell("m2", "snapkv", 0.25, 0.9),
      cell("m2", "snapkv", 0.5, 0.95),
    ],
  };
  const charts = fidelityCharts(r);
  assert.deepEqual(charts.map((c) => c.model), ["m1", "m2"]); // m3 has no cells
  const els = parse(charts[0].svg);
  assert.deepEqual(texts(els, "legend"), ["full", "snapkv", "heterocache", "streaming"]);
  assert.match(texts(els, "title")[0], /m1/);
  const lines = els.filter((e) => e.name === "polyline");
  assert.equal(lines.length, 3); // the failed streaming cell leaves two lone points
  assert.ok(lines[0].attrs["stroke-dasharray"], "full is dashed");
  const [full, snap] = polylines(els);
  assert.equal(full[0][1], full[1][1], "the reference line is flat");
  assert.equal(full[0][0], snap[0][0], "and spans the keep range");
  assert.equal(full[1][0], snap[snap.length - 1][0]);
  // The axis starts 5 points below the worst cell (streaming at 50%), not at 0.
  assert.deepEqual(texts(els, "tick-y"), ["50", "60", "70", "80", "90", "100"]);
  assert.deepEqual(texts(parse(charts[1].svg), "legend"), ["full", "snapkv"]);
});

Deno.test("speedCharts: a chart per shape, log axes, null steps skipped, llama.cpp dashed", () => {
  const engines = ["full", "heterocache", "snapkv", "llama.cpp"];
  const contexts = [1024, 4096, 16384, 65536];
  const r = {
    shapes: [{ id: "s1", label: "1.1B q8_0" }, { id: "s2", label: "none" }],
    cells: engines.flatMap((engine, e) =>
      contexts.map((context, i) => ({
        shape: "s1",
        engine,
        context,
        stepMs: engine === "full" && context === 65536 ? null : (e + 1) * 2 ** i,
      }))
    ),
  };
  const charts = speedCharts(r);
  assert.equal(charts.length, 1);
  assert.equal(charts[0].shape, "s1");
  const els = parse(charts[0].svg);
  assert.match(texts(els, "title")[0], /1\.1B q8_0/);
  assert.deepEqual(texts(els, "legend"), engines);
  assert.deepEqual(texts(els, "tick-x"), ["1K", "4K", "16K", "64K"]);
  assert.ok(texts(els, "tick-y").includes("10"));
  const lines = els.filter((e) => e.name === "polyline");
  assert.equal(lines.length, 4);
  assert.equal(polylines(els)[0].length, 3, "the null step is left out");
  assert.deepEqual(lines.map((e) => Boolean(e.attrs["stroke-dasharray"])), [
    false,
    false,
    false,
    true,
  ]);
});
