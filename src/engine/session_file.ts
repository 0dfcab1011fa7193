/**
 * The session file (`session.save`, `model.restore`): a header, a version, the model's identity,
 * the session's tokens and its cache policy's state (device rows, host store), and a checksum.
 *
 * Layout: 8 bytes magic "HCVKSESS", u32 LE version, u32 LE header bytes, the header (UTF-8
 * JSON), the blobs one after another (their sizes are in the header), then the SHA-256 of every
 * byte before it. Magic and version come first in every version, so a newer file is told apart
 * from a damaged one.
 */
import { HcError } from "../errors.ts";
import { type HeadProfile, serializeProfile } from "../cache/profile/profile.ts";

const MAGIC = new TextEncoder().encode("HCVKSESS");
export const SESSION_FILE_VERSION = 1;
const DIGEST_BYTES = 32;

function corrupt(why: string): HcError {
  return new HcError(
    "E_SESSION_FILE",
    `not a usable session file: ${why}; save the session again (session.save / hc generate --save)`,
  );
}

async function sha256(bytes: Uint8Array): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
}

/** Hex SHA-256 of a profile's canonical text (what a session file records of it). */
export async function profileHash(profile: HeadProfile): Promise<string> {
  const digest = await sha256(new TextEncoder().encode(serializeProfile(profile)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function encodeSessionFile(
  header: Record<string, unknown>,
  blobs: readonly Uint8Array[],
): Promise<Uint8Array> {
  const json = new TextEncoder().encode(
    JSON.stringify({ ...header, blobBytes: blobs.map((b) => b.byteLength) }),
  );
  const body = 16 + json.byteLength + blobs.reduce((s, b) => s + b.byteLength, 0);
  const out = new Uint8Array(body + DIGEST_BYTES);
  out.set(MAGIC, 0);
  const view = new DataView(out.buffer);
  view.setUint32(8, SESSION_FILE_VERSION, true);
  view.setUint32(12, json.byteLength, true);
  out.set(json, 16);
  let at = 16 + json.byteLength;
  for (const b of blobs) {
    out.set(b, at);
    at += b.byteLength;
  }
  out.set(await sha256(out.subarray(0, body)), body);
  return out;
}

/** The header (JSON, not yet checked field by field) and the blobs of a session file. */
export async function decodeSessionFile(
  bytes: Uint8Array,
): Promise<{ header: Record<string, unknown>; blobs: Uint8Array[] }> {
  if (bytes.byteLength < 16 + DIGEST_BYTES) corruptThrow(`${bytes.byteLength} bytes is too short`);
  if (MAGIC.some((b, i) => bytes[i] !== b)) corruptThrow("it does not start with HCVKSESS");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version > SESSION_FILE_VERSION) {
    throw new HcError(
      "E_SESSION_VERSION",
      `the session file has version ${version}; this build reads up to ${SESSION_FILE_VERSION} ` +
        "(update HeteroCache-VK, or save the session again with this build)",
    );
  }
  if (version < 1) corruptThrow(`version ${version}`);
  const body = bytes.byteLength - DIGEST_BYTES;
  const digest = await sha256(bytes.subarray(0, body));
  if (digest.some((b, i) => bytes[body + i] !== b)) {
    corruptThrow("its checksum does not match (truncated or damaged)");
  }
  const headerBytes = view.getUint32(12, true);
  if (16 + headerBytes > body) corruptThrow("its header runs past the end");
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      bytes.subarray(16, 16 + headerBytes),
    ));
  } catch {
    corruptThrow("its header is not JSON");
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    corruptThrow("its header is not an object");
  }
  const h = header as Record<string, unknown>;
  const sizes = h.blobBytes;
  if (!Array.isArray(sizes) || !sizes.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    corruptThrow("its blob table is malformed");
  }
  const blobs: Uint8Array[] = [];
  let at = 16 + headerBytes;
  for (const n of sizes as number[]) {
    if (at + n > body) corruptThrow("its data runs past the end");
    blobs.push(bytes.slice(at, at + n));
    at += n;
  }
  if (at !== body) corruptThrow("it has bytes no blob accounts for");
  return { header: h, blobs };
}

function corruptThrow(why: string): never {
  throw corrupt(why);
}
