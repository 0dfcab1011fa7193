/** Reading a profile file of either schema and tying it to the loaded model. */
import { HcError } from "../errors.ts";
import {
  checkProfileMatches,
  type HeadProfile,
  importOfficialProfile,
  type ModelIdentity,
  parseProfile,
} from "./profile.ts";

/**
 * Our versioned profile JSON, or the official HeteroCache JSON (recognised by its
 * `classification_matrix`; its file name supplies topk and thresholds). Either must match the
 * model: layer and head counts always, architecture, head size and weight hash when recorded.
 */
export function profileFromText(
  text: string,
  model: ModelIdentity,
  fileName?: string,
): HeadProfile {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new HcError("E_PROFILE", `the profile is not JSON: ${(e as Error).message}`);
  }
  const official = typeof json === "object" && json !== null && "classification_matrix" in json;
  const profile = official
    ? importOfficialProfile(text, { nLayers: model.nLayers, nKvHeads: model.nKvHeads }, {
      fileName,
    })
    : parseProfile(json);
  checkProfileMatches(profile, model);
  return profile;
}

/** Reads and checks a profile file. */
export async function readProfile(path: string, model: ModelIdentity): Promise<HeadProfile> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new HcError("E_IO", `cannot read the profile ${path}: ${(e as Error).message}`);
  }
  return profileFromText(text, model, path.split("/").pop());
}
