/** Incremental UTF-8: emits only complete sequences and holds back an unfinished tail. */

// ignoreBOM: a generated U+FEFF is text, not a byte-order mark to drop.
const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

export function utf8ToString(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

/** Length of the sequence a lead byte announces (0 for a continuation or invalid byte). */
function sequenceLength(lead: number): number {
  if (lead < 0x80) return 1;
  if (lead >= 0xc2 && lead <= 0xdf) return 2;
  if (lead >= 0xe0 && lead <= 0xef) return 3;
  if (lead >= 0xf0 && lead <= 0xf4) return 4;
  return 0;
}

/**
 * Number of trailing bytes of `buf[0, len)` that form a still-valid but unfinished sequence.
 * Anything already invalid is not held: it decodes to U+FFFD now, as it would later.
 */
function pendingTail(buf: Uint8Array, len: number): number {
  for (let back = 1; back <= 3 && back <= len; back++) {
    const b = buf[len - back];
    if ((b & 0xc0) === 0x80) continue;
    const need = sequenceLength(b);
    return need > back ? back : 0;
  }
  return 0;
}

export class Utf8Stream {
  #buf = new Uint8Array(16);
  #len = 0;

  /** Appends bytes and returns the text that is now complete. */
  push(bytes: Uint8Array): string {
    if (bytes.length === 0) return "";
    if (this.#len + bytes.length > this.#buf.length) {
      const grown = new Uint8Array(Math.max(this.#buf.length * 2, this.#len + bytes.length));
      grown.set(this.#buf.subarray(0, this.#len));
      this.#buf = grown;
    }
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
    const hold = pendingTail(this.#buf, this.#len);
    const ready = this.#len - hold;
    if (ready === 0) return "";
    const text = decoder.decode(this.#buf.subarray(0, ready));
    this.#buf.copyWithin(0, ready, this.#len);
    this.#len = hold;
    return text;
  }

  flush(): string {
    if (this.#len === 0) return "";
    const text = decoder.decode(this.#buf.subarray(0, this.#len));
    this.#len = 0;
    return text;
  }
}
