/**
 * Server settings checked when the server is made: settings no request could run with are
 * refused there, with the reason, instead of answering every request with the same error.
 */
import { HcError } from "../errors.ts";
import { parseProfile } from "../engine/model.ts";
import { CACHE_POLICIES, checkKeepForPolicy, NEEDS_PROFILE, parseKeep } from "./openai.ts";
import type { ServerOptions } from "./app.ts";

/**
 * A profile file, checked as far as it can be before the model is known: readable, JSON, and
 * either our profile schema or the official HeteroCache JSON (whose layer and head counts, like
 * the model match of both, are checked once the model has loaded).
 */
export function readProfileText(path: string): string {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (e) {
    throw new HcError("E_IO", `cannot read the profile ${path}: ${(e as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new HcError("E_PROFILE", `the profile ${path} is not JSON: ${(e as Error).message}`);
  }
  const official = typeof json === "object" && json !== null && "classification_matrix" in json;
  if (!official) {
    try {
      parseProfile(json);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new HcError(
        "E_PROFILE",
        `${path} is not a head profile (${why}); make one with \`hc calibrate --out PATH\` or pass the official HeteroCache JSON`,
      );
    }
  }
  return text;
}

/** The cache policy, profile and keep a server is made with, checked together. */
export function checkServerOptions(opts: ServerOptions): void {
  const cache = opts.cache ?? "full";
  if (!(CACHE_POLICIES as readonly string[]).includes(cache)) {
    throw new HcError(
      "E_BAD_REQUEST",
      `unknown cache policy '${cache}'; available: ${CACHE_POLICIES.join(", ")}`,
    );
  }
  if (NEEDS_PROFILE.has(cache) && opts.profile === undefined) {
    throw new HcError(
      "E_PROFILE",
      `the ${cache} cache policy needs a head profile (--profile PATH); make one with \`hc calibrate --out profile.json\``,
    );
  }
  const keep = opts.keep ?? null;
  try {
    parseKeep(keep);
    checkKeepForPolicy(cache, keep);
  } catch (e) {
    throw new HcError("E_BAD_REQUEST", `keep: ${(e as Error).message.replaceAll("'", "")}`);
  }
}
