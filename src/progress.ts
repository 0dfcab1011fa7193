/** Progress bars for long work (downloads, weight upload, prefill, calibration). */

export interface ProgressOptions {
  unit?: "bytes" | "count";
  /** Default: whether stderr is a terminal. */
  isTerminal?: boolean;
  /** Where the bar goes. Default: stderr. */
  write?: (text: string) => void;
  /** Clock in ms. Default: performance.now. */
  now?: () => number;
}

const mib = (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;

/** m:ss, or h:mm:ss past an hour. */
function clock(seconds: number): string {
  const s = Math.round(seconds);
  const [h, m, r] = [Math.floor(s / 3600), Math.floor(s / 60) % 60, s % 60];
  const mm = h > 0 ? String(m).padStart(2, "0") : String(m);
  return `${h > 0 ? `${h}:` : ""}${mm}:${String(r).padStart(2, "0")}`;
}

/**
 * A progress bar on stderr when stderr is a terminal; nothing otherwise (logs and pipes stay
 * clean). Byte bars show the rate and the time left, measured from this bar's first update (a
 * resumed download's earlier bytes do not count as speed). Returns the callback and a `done`
 * that ends the line.
 */
export function terminalProgress(
  label: string,
  opts: ProgressOptions = {},
): { update: (done: number, total: number | null) => void; done: () => void } {
  const tty = opts.isTerminal ?? Deno.stderr.isTerminal();
  if (!tty) return { update: () => {}, done: () => {} };
  const enc = new TextEncoder();
  const write = opts.write ?? ((text: string) => Deno.stderr.writeSync(enc.encode(text)));
  const now = opts.now ?? (() => performance.now());
  const bytes = opts.unit !== "count";
  const fmt = bytes ? mib : (n: number) => `${n}`;
  let last = 0;
  let drawn = false;
  let start: { ms: number; done: number } | null = null;
  const width = 30;
  const update = (done: number, total: number | null) => {
    const t = now();
    start ??= { ms: t, done };
    if (drawn && t - last < 100 && done !== total) return;
    last = t;
    drawn = true;
    let line: string;
    if (total !== null && total > 0) {
      const f = Math.min(1, done / total);
      const fill = Math.round(f * width);
      line = `${label} [${"#".repeat(fill)}${" ".repeat(width - fill)}] ${
        (f * 100).toFixed(0).padStart(3)
      }% ${fmt(done)} / ${fmt(total)}`;
    } else {
      line = `${label} ${fmt(done)}`;
    }
    const seconds = (t - start.ms) / 1000;
    const rate = seconds > 0 ? (done - start.done) / seconds : 0;
    if (bytes && rate > 0) {
      line += `  ${mib(rate)}/s`;
      if (total !== null && total > done) line += `  ETA ${clock((total - done) / rate)}`;
    }
    write(`\r${line}\x1b[K`);
  };
  const done = () => {
    if (drawn) write("\n");
    drawn = false;
  };
  return { update, done };
}
