/**
 * Stop strings over a stream of text pieces: text that could still turn into a stop string is
 * held back, so a client never sees any part of a stop string.
 */
export class StopMatcher {
  readonly #stops: readonly string[];
  #pending = "";
  #stopped = false;

  constructor(stops: readonly string[]) {
    this.#stops = stops.filter((s) => s.length > 0);
  }

  get stopped(): boolean {
    return this.#stopped;
  }

  /** Feeds new text; returns what may be emitted now (everything before a stop string). */
  push(text: string): string {
    if (this.#stopped) return "";
    this.#pending += text;
    let cut = -1;
    for (const s of this.#stops) {
      const at = this.#pending.indexOf(s);
      if (at >= 0 && (cut < 0 || at < cut)) cut = at;
    }
    if (cut >= 0) {
      this.#stopped = true;
      const out = this.#pending.slice(0, cut);
      this.#pending = "";
      return out;
    }
    const hold = this.#heldSuffix();
    const out = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(this.#pending.length - hold);
    return out;
  }

  /** The text held back, once the stream ends without a stop string. */
  flush(): string {
    const out = this.#stopped ? "" : this.#pending;
    this.#pending = "";
    return out;
  }

  /** Length of the longest suffix of the pending text that is a proper prefix of a stop string. */
  #heldSuffix(): number {
    let best = 0;
    const p = this.#pending;
    for (const s of this.#stops) {
      for (let n = Math.min(s.length - 1, p.length); n > best; n--) {
        if (p.endsWith(s.slice(0, n))) {
          best = n;
          break;
        }
      }
    }
    return best;
  }
}
