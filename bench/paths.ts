/** Path helpers for the benchmark scripts (JSR's @std/path is unreachable; node:path works). */
import { fileURLToPath } from "node:url";
export { dirname, join } from "node:path";

export function fromFileUrl(url: string | URL): string {
  return fileURLToPath(url);
}
