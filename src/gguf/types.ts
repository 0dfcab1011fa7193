/** ggml tensor type ids as stored in GGUF tensor infos (ggml.h `enum ggml_type`). */
export const GgmlType = {
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q4_1: 3,
  Q5_0: 6,
  Q5_1: 7,
  Q8_0: 8,
  Q8_1: 9,
  Q2_K: 10,
  Q3_K: 11,
  Q4_K: 12,
  Q5_K: 13,
  Q6_K: 14,
  Q8_K: 15,
  IQ4_NL: 20,
  IQ4_XS: 23,
  I8: 24,
  I16: 25,
  I32: 26,
  I64: 27,
  F64: 28,
  BF16: 30,
} as const;
export type GgmlType = (typeof GgmlType)[keyof typeof GgmlType];

/** The weight types this engine can run (others are parsed but rejected at model load). */
export const SUPPORTED_WEIGHT_TYPES: readonly GgmlType[] = [
  GgmlType.F32,
  GgmlType.F16,
  GgmlType.BF16,
  GgmlType.Q8_0,
  GgmlType.Q4_0,
  GgmlType.Q4_1,
  GgmlType.Q5_0,
  GgmlType.Q5_1,
  GgmlType.Q2_K,
  GgmlType.Q3_K,
  GgmlType.Q4_K,
  GgmlType.Q5_K,
  GgmlType.Q6_K,
  GgmlType.IQ4_NL,
  GgmlType.IQ4_XS,
];

export interface GgmlTypeInfo {
  readonly name: string;
  /** Elements per block (1 for plain types). */
  readonly blockElems: number;
  /** Bytes per block. */
  readonly blockBytes: number;
}

const INFO: Record<number, GgmlTypeInfo> = {
  0: { name: "F32", blockElems: 1, blockBytes: 4 },
  1: { name: "F16", blockElems: 1, blockBytes: 2 },
  2: { name: "Q4_0", blockElems: 32, blockBytes: 18 },
  3: { name: "Q4_1", blockElems: 32, blockBytes: 20 },
  6: { name: "Q5_0", blockElems: 32, blockBytes: 22 },
  7: { name: "Q5_1", blockElems: 32, blockBytes: 24 },
  8: { name: "Q8_0", blockElems: 32, blockBytes: 34 },
  9: { name: "Q8_1", blockElems: 32, blockBytes: 36 },
  10: { name: "Q2_K", blockElems: 256, blockBytes: 84 },
  11: { name: "Q3_K", blockElems: 256, blockBytes: 110 },
  12: { name: "Q4_K", blockElems: 256, blockBytes: 144 },
  13: { name: "Q5_K", blockElems: 256, blockBytes: 176 },
  14: { name: "Q6_K", blockElems: 256, blockBytes: 210 },
  15: { name: "Q8_K", blockElems: 256, blockBytes: 292 },
  20: { name: "IQ4_NL", blockElems: 32, blockBytes: 18 },
  23: { name: "IQ4_XS", blockElems: 256, blockBytes: 136 },
  24: { name: "I8", blockElems: 1, blockBytes: 1 },
  25: { name: "I16", blockElems: 1, blockBytes: 2 },
  26: { name: "I32", blockElems: 1, blockBytes: 4 },
  27: { name: "I64", blockElems: 1, blockBytes: 8 },
  28: { name: "F64", blockElems: 1, blockBytes: 8 },
  30: { name: "BF16", blockElems: 1, blockBytes: 2 },
};

/** Layout of a known ggml type, or undefined for an id this engine does not know. */
export function ggmlTypeInfo(type: number): GgmlTypeInfo | undefined {
  return INFO[type];
}

/** Bytes of a row-major tensor of `elems` elements; undefined if elems is not whole blocks. */
export function ggmlBytes(type: number, elems: number): number | undefined {
  const info = INFO[type];
  if (!info || elems % info.blockElems !== 0) return undefined;
  return (elems / info.blockElems) * info.blockBytes;
}
