/** The shim's symbol table and how the native library is found (HC_VK_LIB, else build/). */
import { HcError, type HcErrorCode } from "../errors.ts";

const SYMBOLS = {
  hc_last_error: { parameters: ["buffer", "u64"], result: "i32" },
  hc_devices_json: { parameters: ["buffer", "u64"], result: "i32" },
  hc_device_open: { parameters: ["buffer", "buffer"], result: "i32" },
  hc_device_close: { parameters: ["u64"], result: "i32" },
  hc_device_info: { parameters: ["u64", "buffer", "u64"], result: "i32" },
  hc_device_memory: { parameters: ["u64", "buffer"], result: "i32" },
  hc_device_set_budget: { parameters: ["u64", "u64"], result: "i32" },
  hc_buffer_create: { parameters: ["u64", "u64", "i32", "buffer"], result: "i32" },
  hc_buffer_destroy: { parameters: ["u64"], result: "i32" },
  hc_buffer_map: { parameters: ["u64", "buffer"], result: "i32" },
  hc_kernel_create: {
    parameters: ["u64", "buffer", "u64", "buffer", "u32", "u32", "buffer", "u32", "buffer"],
    result: "i32",
  },
  hc_kernel_destroy: { parameters: ["u64"], result: "i32" },
  hc_cmd_create: { parameters: ["u64", "i32", "buffer"], result: "i32" },
  hc_cmd_destroy: { parameters: ["u64"], result: "i32" },
  hc_cmd_begin: { parameters: ["u64"], result: "i32" },
  hc_cmd_dispatch: {
    parameters: ["u64", "u64", "buffer", "u32", "buffer", "u32", "u32", "u32", "u32"],
    result: "i32",
  },
  hc_cmd_barrier: { parameters: ["u64"], result: "i32" },
  hc_cmd_copy: { parameters: ["u64", "u64", "u64", "buffer", "u32"], result: "i32" },
  hc_cmd_fill: { parameters: ["u64", "u64", "u64", "u64", "u32"], result: "i32" },
  hc_cmd_timestamp: { parameters: ["u64", "u32"], result: "i32" },
  hc_cmd_end: { parameters: ["u64"], result: "i32" },
  hc_cmd_timestamps: { parameters: ["u64", "buffer", "u32"], result: "i32" },
  hc_submit: { parameters: ["u64", "u64", "u64", "buffer"], result: "i32" },
  hc_wait: { parameters: ["u64", "i32", "u64", "u64"], result: "i32", nonblocking: true },
  hc_wait_sync: { name: "hc_wait", parameters: ["u64", "i32", "u64", "u64"], result: "i32" },
  hc_poll: { parameters: ["u64", "i32", "buffer"], result: "i32" },
  hc_gather_batch: { parameters: ["buffer", "u32"], result: "i32", nonblocking: true },
  hc_select_rows: {
    parameters: ["buffer", "u32", "buffer", "u32", "buffer"],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

export type Native = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** Shim status codes (hcvk.h) mapped to stable error codes. */
const STATUS: Record<number, HcErrorCode> = {
  [-1]: "E_VK",
  [-2]: "E_VK_OOM",
  [-3]: "E_VK_BAD_HANDLE",
  [-4]: "E_VK_LIMIT",
  [-5]: "E_VK",
  [-6]: "E_VK_NO_DEVICE",
  [-7]: "E_VK",
  [-8]: "E_VK",
};

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;

function libraryPath(): string {
  const env = Deno.env.get("HC_VK_LIB");
  if (env) return env;
  return new URL("../../build/libhcvk.so", import.meta.url).pathname;
}

/** The loaded shim; loaded once per process and never closed (kernels may outlive any model). */
export function native(): Native {
  if (lib) return lib.symbols;
  const path = libraryPath();
  try {
    lib = Deno.dlopen(path, SYMBOLS);
  } catch (e) {
    throw new HcError(
      "E_VK_NO_LIBRARY",
      `cannot load the Vulkan shim at ${path} (${(e as Error).message}). ` +
        "Run `deno task build` first, or point HC_VK_LIB at a built libhcvk.so.",
    );
  }
  return lib.symbols;
}

const errBuf = new Uint8Array(1024);

export function lastError(): string {
  const n = native().hc_last_error(errBuf, BigInt(errBuf.length));
  return new TextDecoder().decode(errBuf.subarray(0, n));
}

/** Throws the HcError matching a shim status, with the shim's text. */
export function check(status: number, what: string): void {
  if (status === 0) return;
  const code = STATUS[status] ?? "E_VK";
  throw new HcError(code, `${what}: ${lastError()}`);
}

/** A C string argument. */
export function cstr(s: string): Uint8Array {
  return new TextEncoder().encode(s + "\0");
}
