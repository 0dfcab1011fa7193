/**
 * The lengths arena: one device buffer and one mapped staging buffer holding the per-head
 * lengths (u32) of a whole set of layer caches, layer l's at window l. Windows are
 * `strideBytes` apart, a multiple of minStorageBufferOffsetAlignment, so each layer's window
 * binds on its own (src/cache/kv_layer.ts, "Lengths") and staging and device share one layout:
 * a decode step uploads every layer's lengths in one copy.
 *
 * Ownership: whoever creates the arena disposes it (a cache policy, with its caches); each
 * KvLayerCache using a window holds it too, and the buffers are freed when the owner and every
 * holder have let go, so a cache never outlives the mapped memory its `lengths` view reads.
 */
import { HcError } from "../errors.ts";
import type { Buffer, CommandList, Device } from "../vk/mod.ts";

/** A window of the device lengths buffer, as a kernel binds it. */
export interface LengthsWindow {
  readonly buffer: Buffer;
  readonly offset: number;
  readonly bytes: number;
}

/** Window `layer` of an arena: where one layer cache keeps its lengths. */
export interface LengthsSlot {
  arena: KvLengths;
  layer: number;
}

function limit(message: string): never {
  throw new HcError("E_VK_LIMIT", message);
}

export class KvLengths implements Disposable {
  readonly device: Device;
  /** Windows (layers) in the arena. */
  readonly layers: number;
  /** u32 lengths each window holds (KV heads per layer). */
  readonly heads: number;
  /** Bytes between windows: heads * 4 rounded up to the storage offset alignment. */
  readonly strideBytes: number;
  /** Device u32 lengths: what the kernels read. */
  readonly buffer: Buffer;
  /** Mapped upload buffer, same layout: the host writes here, recordUpload copies it in. */
  readonly staging: Buffer;
  readonly #mapped: Uint8Array;
  #holders = 0;
  #released = false;
  #freed = false;

  private constructor(device: Device, layers: number, heads: number) {
    this.device = device;
    this.layers = layers;
    this.heads = heads;
    const align = Math.max(4, device.info.minStorageBufferOffsetAlignment);
    this.strideBytes = Math.ceil((heads * 4) / align) * align;
    const bytes = layers * this.strideBytes;
    this.buffer = device.buffer(bytes);
    try {
      this.staging = device.buffer(bytes, "upload");
    } catch (e) {
      this.buffer.dispose();
      throw e;
    }
    this.#mapped = this.staging.mapped().subarray(0, bytes);
    this.#mapped.fill(0);
    try {
      device.upload(this.buffer, this.#mapped);
    } catch (e) {
      this.#free();
      throw e;
    }
  }

  /** An arena of `layers` windows of `heads` lengths each, all 0 (device and staging). */
  static create(device: Device, opts: { layers: number; heads: number }): KvLengths {
    const { layers, heads } = opts;
    if (!Number.isInteger(layers) || layers < 1 || layers > 65536) {
      limit(`a lengths arena needs 1..65536 layers, got ${layers}`);
    }
    if (!Number.isInteger(heads) || heads < 1 || heads > 4096) {
      limit(`a lengths arena needs 1..4096 heads per layer, got ${heads}`);
    }
    return new KvLengths(device, layers, heads);
  }

  get disposed(): boolean {
    return this.#freed || this.#released;
  }

  #check(layer: number, heads: number): void {
    if (this.#freed) throw new HcError("E_VK_BAD_HANDLE", "the lengths arena was freed");
    if (!Number.isInteger(layer) || layer < 0 || layer >= this.layers) {
      limit(`lengths window ${layer} outside [0, ${this.layers})`);
    }
    if (!Number.isInteger(heads) || heads < 1 || heads > this.heads) {
      limit(`${heads} lengths do not fit a window of ${this.heads}`);
    }
  }

  /** Device window of layer `layer`'s first `heads` lengths. */
  window(layer: number, heads = this.heads): LengthsWindow {
    this.#check(layer, heads);
    return { buffer: this.buffer, offset: layer * this.strideBytes, bytes: heads * 4 };
  }

  /** The mapped staging lengths of window `layer` (the first `heads`). */
  view(layer: number, heads = this.heads): Uint32Array {
    this.#check(layer, heads);
    const m = this.#mapped;
    return new Uint32Array(m.buffer, m.byteOffset + layer * this.strideBytes, heads);
  }

  /** Records the staging -> device copy of windows [first, end) as one transfer; follow it
   * with a barrier. */
  recordUpload(cmd: CommandList, first = 0, end = this.layers): void {
    if (this.#freed) throw new HcError("E_VK_BAD_HANDLE", "the lengths arena was freed");
    if (!Number.isInteger(first) || !Number.isInteger(end) || first < 0 || end > this.layers) {
      limit(`lengths windows [${first}, ${end}) outside [0, ${this.layers})`);
    }
    if (end <= first) return;
    const at = first * this.strideBytes;
    // The last window's tail past its heads is padding: not copied.
    const bytes = (end - first - 1) * this.strideBytes + this.heads * 4;
    cmd.copy(this.staging, this.buffer, [[at, at, bytes]]);
  }

  /** A cache takes a window: the buffers stay until it lets go (release). */
  hold(): void {
    if (this.disposed) throw new HcError("E_VK_BAD_HANDLE", "the lengths arena was disposed");
    this.#holders++;
  }

  /** A cache lets go of its window. */
  release(): void {
    if (this.#holders > 0) this.#holders--;
    if (this.#released && this.#holders === 0) this.#free();
  }

  #free(): void {
    if (this.#freed) return;
    this.#freed = true;
    this.buffer.dispose();
    this.staging.dispose();
  }

  /** The owner lets go: the buffers go once no cache holds a window. */
  dispose(): void {
    if (this.#released) return;
    this.#released = true;
    if (this.#holders === 0) this.#free();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}
