import { HcError } from "../errors.ts";

/**
 * A read-only file read by absolute byte ranges. Deno has no positional read, so async reads are
 * serialised through one queue (each one seeks, then reads); a sync read while an async one is in
 * flight would move the shared file position under it, so that case is refused with E_BUSY.
 */
export class RandomAccessFile implements Disposable {
  readonly path: string;
  readonly sizeBytes: number;
  #file: Deno.FsFile | null;
  #queue: Promise<void> = Promise.resolve();
  #pendingReads = 0;

  private constructor(path: string, file: Deno.FsFile, sizeBytes: number) {
    this.path = path;
    this.#file = file;
    this.sizeBytes = sizeBytes;
  }

  static async open(path: string | URL): Promise<RandomAccessFile> {
    const shown = pathText(path);
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (e) {
      throw openError(shown, e);
    }
    try {
      const info = await file.stat();
      if (!info.isFile) throw new HcError("E_IO", `${shown} is not a regular file`);
      return new RandomAccessFile(shown, file, info.size);
    } catch (e) {
      file.close();
      throw e instanceof HcError ? e : openError(shown, e);
    }
  }

  static openSync(path: string | URL): RandomAccessFile {
    const shown = pathText(path);
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true });
    } catch (e) {
      throw openError(shown, e);
    }
    try {
      const info = file.statSync();
      if (!info.isFile) throw new HcError("E_IO", `${shown} is not a regular file`);
      return new RandomAccessFile(shown, file, info.size);
    } catch (e) {
      file.close();
      throw e instanceof HcError ? e : openError(shown, e);
    }
  }

  get closed(): boolean {
    return this.#file === null;
  }

  /** Fills `dst` with the bytes at [offsetBytes, offsetBytes + dst.length). */
  read(dst: Uint8Array, offsetBytes: number): Promise<void> {
    try {
      this.#checkRange(dst.length, offsetBytes);
    } catch (e) {
      return Promise.reject(e);
    }
    this.#pendingReads++;
    const run = this.#queue.then(() => this.#readAsync(dst, offsetBytes)).finally(() => {
      this.#pendingReads--;
    });
    this.#queue = run.catch(() => {});
    return run;
  }

  readSync(dst: Uint8Array, offsetBytes: number): void {
    this.#checkRange(dst.length, offsetBytes);
    if (this.#pendingReads > 0) {
      throw new HcError(
        "E_BUSY",
        `${this.path}: a sync read was requested while an async read runs`,
      );
    }
    const file = this.#handle();
    try {
      file.seekSync(offsetBytes, Deno.SeekMode.Start);
      let done = 0;
      while (done < dst.length) {
        const n = file.readSync(dst.subarray(done));
        if (n === null || n === 0) throw this.#shortRead(offsetBytes, dst.length, done);
        done += n;
      }
    } catch (e) {
      throw e instanceof HcError ? e : new HcError("E_IO", `${this.path}: read failed: ${e}`, {
        cause: e,
      });
    }
  }

  close(): void {
    if (this.#file) {
      this.#file.close();
      this.#file = null;
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  async #readAsync(dst: Uint8Array, offsetBytes: number): Promise<void> {
    const file = this.#handle();
    try {
      await file.seek(offsetBytes, Deno.SeekMode.Start);
      let done = 0;
      while (done < dst.length) {
        const n = await file.read(dst.subarray(done));
        if (n === null || n === 0) throw this.#shortRead(offsetBytes, dst.length, done);
        done += n;
      }
    } catch (e) {
      throw e instanceof HcError ? e : new HcError("E_IO", `${this.path}: read failed: ${e}`, {
        cause: e,
      });
    }
  }

  #handle(): Deno.FsFile {
    if (!this.#file) throw new HcError("E_IO", `${this.path}: file is closed`);
    return this.#file;
  }

  #checkRange(lengthBytes: number, offsetBytes: number): void {
    if (
      !Number.isSafeInteger(offsetBytes) || offsetBytes < 0 ||
      offsetBytes + lengthBytes > this.sizeBytes
    ) {
      throw new RangeError(
        `${this.path}: read of ${lengthBytes} bytes at ${offsetBytes} is outside the file ` +
          `(${this.sizeBytes} bytes)`,
      );
    }
  }

  #shortRead(offsetBytes: number, wantBytes: number, gotBytes: number): HcError {
    return new HcError(
      "E_IO",
      `${this.path}: file ended after ${gotBytes} of ${wantBytes} bytes at offset ${offsetBytes}; ` +
        `was it changed while open?`,
    );
  }
}

function pathText(path: string | URL): string {
  return path instanceof URL
    ? (path.protocol === "file:" ? decodeURIComponent(path.pathname) : path.href)
    : path;
}

function openError(shown: string, e: unknown): HcError {
  if (e instanceof Deno.errors.NotFound) {
    return new HcError("E_IO", `cannot open ${shown}: no such file`, { cause: e });
  }
  return new HcError("E_IO", `cannot open ${shown}: ${e}`, { cause: e });
}
