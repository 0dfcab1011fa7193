/** Reading a profile file of either schema and tying it to the loaded model. */
import { HcError } from "../../errors.ts";
import {
  checkProfileMatches,
  type HeadProfile,
  type HeadRole,
  importOfficialProfile,
  type ModelIdentity,
  parseProfile,
  PROFILE_SCHEMA,
  PROFILE_VERSION,
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

/**
 * A profile with the same roles in every layer, one cluster (the pivot and every satellite), for
 * synthetic models in tests and benchmarks that have no calibration of their own.
 */
export function uniformProfile(
  nLayers: number,
  roles: readonly HeadRole[],
  multipliers: readonly number[],
): HeadProfile {
  return layeredProfile(Array.from({ length: nLayers }, () => ({ roles, multipliers })));
}

/**
 * A profile from per-layer roles and multipliers; a layer with a pivot gets one cluster (the
 * pivot and every satellite). For synthetic models without a calibration of their own.
 */
export function layeredProfile(
  layers: readonly { roles: readonly HeadRole[]; multipliers: readonly number[] }[],
): HeadProfile {
  return parseProfile({
    schema: PROFILE_SCHEMA,
    version: PROFILE_VERSION,
    model: {
      arch: null,
      nLayers: layers.length,
      nKvHeads: layers[0]?.roles.length ?? 0,
      headDim: null,
      attnHash: null,
    },
    params: {
      source: "calibrated",
      topk: null,
      stableThreshold: 0.5,
      simThreshold: 0.5,
      calibrationTokens: null,
      decodeSteps: null,
      similarityKeyTokens: null,
      groupReduce: "mean",
      poolKernel: 5,
    },
    layers: layers.map(({ roles, multipliers }) => {
      const pivot = roles.indexOf("pivot");
      const satellites = roles.flatMap((r, h) => (r === "satellite" ? [h] : []));
      return {
        roles: [...roles],
        multipliers: [...multipliers],
        stability: roles.map(() => null),
        clusters: pivot >= 0 ? [{ pivot, satellites }] : [],
      };
    }),
  });
}
