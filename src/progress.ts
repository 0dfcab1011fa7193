/** Progress bars for long work (downloads, weight upload, prefill, calibration). */

/**
 * A progress bar on stderr when stderr is a terminal; nothing otherwise (logs and pipes stay
 * clean). Returns the callback and a `done` that ends the line.
 */
export function terminalProgress(
  label: string,
  opts: { unit?: "bytes" | "count"; isTerminal?: boolean } = {},
): { update: (done: number, total: number | null) => void; done: () => void } {
  const tty = opts.isTerminal ?? Deno.stderr.isTerminal();
  if (!tty) return { update: () => {}, done: () => {} };
  const enc = new TextEncoder();
  const fmt = opts.unit === "count"
    ? (n: number) => `${n}`
    : (n: number) => `${(n / (1 << 20)).toFixed(1)} MiB`;
  let last = 0;
  let drawn = false;
  const width = 30;
  const update = (done: number, total: number | null) => {
    const now = performance.now();
    if (drawn && now - last < 100 && done !== total) return;
    last = now;
    drawn = true;
    let line: string;
    if (total !== null && total > 0) {
      const f = Math.min(1, done / total);
      const fill = Math.round(f * width);
      line =
        `${label} [${"#".repeat(fill)}${" ".repeat(width - fill)}] ${
          (f * 100).toFixed(0).padStart(3)
        }% ` +
        `${fmt(done)} / ${fmt(total)}`;
    } else {
      line = `${label} ${fmt(done)}`;
    }
    Deno.stderr.writeSync(enc.encode(`\r${line}\x1b[K`));
  };
  const done = () => {
    if (drawn) Deno.stderr.writeSync(enc.encode("\n"));
    drawn = false;
  };
  return { update, done };
}
