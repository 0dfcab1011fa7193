/**
 * CPU seconds this process has used so far (user + system, from /proc/self/stat), or NaN where
 * that file is missing. On lavapipe the kernels run on this process's worker threads, so CPU
 * seconds over wall seconds around a kernel's submissions is the number of cores it actually
 * got: a buffer copy is one memcpy thread there, so a kernel that gets fewer cores than the
 * machine has (another process busy) falls behind the copy however the runs are interleaved.
 */
export function cpuSeconds(): number {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / CLOCK_TICKS;
  } catch {
    return NaN;
  }
}

/** Linux's USER_HZ, the unit of /proc/<pid>/stat times (100 on every mainstream ABI). */
const CLOCK_TICKS = 100;

/** Accumulates CPU and wall seconds over several timed sections. */
export class CpuShare {
  #cpu = 0;
  #wall = 0;
  #cpu0 = 0;
  #wall0 = 0;

  start(): void {
    this.#cpu0 = cpuSeconds();
    this.#wall0 = performance.now();
  }

  stop(): void {
    this.#cpu += cpuSeconds() - this.#cpu0;
    this.#wall += (performance.now() - this.#wall0) / 1e3;
  }

  /** Cores used on average over the sections (NaN without /proc). */
  get cores(): number {
    return this.#wall > 0 ? this.#cpu / this.#wall : NaN;
  }
}
