export * from "./types.ts";
export * from "./reader.ts";
export * from "./writer.ts";
