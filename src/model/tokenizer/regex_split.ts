/**
 * llama.cpp's `unicode_regex_split`, reproduced in its quirks: a pre-tokenizer is a list of
 * regexes, each re-splitting the pieces the previous one left, and the text between matches stays
 * a piece of its own. llama.cpp runs each regex one of three ways, and the way changes results:
 *
 * - `native`: the handful of patterns llama.cpp implements by hand (GPT-2, Llama 3, Qwen 2,
 *   Qwen 3.5), which see every code point's real Unicode category. Here they run as JS `u`
 *   regexes; only `\s` needs spelling out, as Unicode White_Space (llama.cpp's set), since JS
 *   `\s` adds U+FEFF and lacks U+0085.
 * - `category`: any other pattern that names `\p{…}`. llama.cpp runs std::regex over a
 *   "collapsed" text where every non-ASCII code point becomes one byte standing for its class
 *   (whitespace, number, letter, punctuation, mark, symbol, other) and rewrites each `\p{X}` as
 *   that byte plus X's ASCII members. So `[^a-z]` matches every non-ASCII letter, upper or lower.
 * - `wide`: a pattern without `\p{…}` runs over the real code points, except that non-ASCII
 *   whitespace is first replaced by U+000B, so a literal range such as deepseek's CJK rule
 *   `[ࠀ-一]` never matches U+3000 or U+2009 although they lie inside it; `\s` is ASCII.
 */

export type SplitMode = "native" | "category" | "wide";

export interface SplitStep {
  readonly mode: SplitMode;
  /** The pattern in llama.cpp's spelling (`\s`, `\p{L}`, …). */
  readonly pattern: string;
}

/** Unicode White_Space, the set llama.cpp's tables mark as whitespace. */
const WS = "\\t-\\r \\x85\\xA0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
const ASCII_WS = "\\t-\\r ";

/** The byte a non-ASCII code point collapses to, and each class's ASCII members. */
const COLLAPSED = {
  other: 0xd0,
  N: 0xd1,
  L: 0xd2,
  P: 0xd3,
  M: 0xd4,
  S: 0xd5,
  space: 0x0b,
} as const;
const CATEGORY_CLASS: Readonly<Record<string, string>> = {
  N: "\\xD10-9",
  L: "\\xD2A-Za-z",
  P: "\\xD3\\x21-\\x23\\x25-\\x2A\\x2C-\\x2F\\x3A\\x3B\\x3F\\x40\\x5B-\\x5D\\x5F\\x7B\\x7D",
  M: "\\xD4",
  S: "\\xD5\\x24\\x2B\\x3C-\\x3E\\x5E\\x60\\x7C\\x7E",
};
/** llama.cpp folds the letter subcategories into letters. */
const CATEGORY_ALIAS: Readonly<Record<string, string>> = {
  N: "N",
  L: "L",
  P: "P",
  M: "M",
  S: "S",
  Lu: "L",
  Ll: "L",
  Lt: "L",
  Lm: "L",
  Lo: "L",
};

const WHITESPACE = new RegExp(`^[${WS}]$`, "u");
const CLASSIFY = /^(?:(\p{N})|(\p{L})|(\p{P})|(\p{M})|(\p{S}))$/u;

/** Collapsed byte per code point, filled on first use (0 = not yet known). */
const collapsedCache = new Uint8Array(0x110000);

function collapse(cp: number): number {
  if (cp < 128) return cp;
  const known = collapsedCache[cp];
  if (known !== 0) return known;
  const ch = String.fromCodePoint(cp);
  let c: number = COLLAPSED.other;
  if (WHITESPACE.test(ch)) c = COLLAPSED.space;
  else {
    const m = CLASSIFY.exec(ch);
    if (m) {
      c = m[1]
        ? COLLAPSED.N
        : m[2]
        ? COLLAPSED.L
        : m[3]
        ? COLLAPSED.P
        : m[4]
        ? COLLAPSED.M
        : COLLAPSED.S;
    }
  }
  collapsedCache[cp] = c;
  return c;
}

/**
 * Rewrites a llama.cpp pattern for one mode, tracking `[…]` the way llama.cpp does (a bracket
 * preceded by a backslash is literal); every other escape is copied as a pair.
 */
function translate(pattern: string, mode: SplitMode): string {
  let out = "";
  let inside = false;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === "[" && !inside) {
      inside = true;
      out += c;
      continue;
    }
    if (c === "]" && inside) {
      inside = false;
      out += c;
      continue;
    }
    if (c !== "\\" || i + 1 >= pattern.length) {
      out += c;
      continue;
    }
    const e = pattern[i + 1];
    if (e === "p" && pattern[i + 2] === "{") {
      const close = pattern.indexOf("}", i + 3);
      const name = pattern.slice(i + 3, close);
      const cat = CATEGORY_ALIAS[name];
      if (close < 0 || cat === undefined) throw new Error(`unsupported class \\p{${name}}`);
      if (mode === "category") {
        out += inside ? CATEGORY_CLASS[cat] : `[${CATEGORY_CLASS[cat]}]`;
      } else {
        out += `\\p{${name}}`;
      }
      i = close;
      continue;
    }
    if (e === "s" || e === "S") {
      const set = mode === "native" ? WS : mode === "wide" ? ASCII_WS : "";
      if (set === "") out += "\\" + e; // collapsed text holds only ASCII whitespace
      else if (e === "s") out += inside ? set : `[${set}]`;
      else if (inside) throw new Error("\\S inside a class is not supported");
      else out += `[^${set}]`;
      i++;
      continue;
    }
    out += c + e;
    i++;
  }
  return out;
}

export function nativeStep(pattern: string): SplitStep {
  return { mode: "native", pattern };
}

/** A pattern llama.cpp runs through std::regex: by category when it names one, else wide. */
export function regexStep(pattern: string): SplitStep {
  return { mode: pattern.includes("\\p{") ? "category" : "wide", pattern };
}

interface CompiledStep {
  readonly mode: SplitMode;
  readonly re: RegExp;
}

export function compileSteps(steps: readonly SplitStep[]): CompiledStep[] {
  return steps.map(({ mode, pattern }) => ({
    mode,
    // The collapsed text is one UTF-16 unit per code point, all below U+0100: no `u` flag there.
    re: new RegExp(translate(pattern, mode), mode === "category" ? "g" : "gu"),
  }));
}

/** The views of one text that the modes match against, built on demand. */
class SplitText {
  readonly text: string;
  #wide?: string;
  #collapsed?: string;
  /** Code point index → UTF-16 offset (length n + 1), and the inverse per unit. */
  #cpUnit?: Int32Array;
  #unitCp?: Int32Array;

  constructor(text: string) {
    this.text = text;
  }

  get wide(): string {
    return this.#wide ??= this.text.replace(
      new RegExp(`[${WS.slice(ASCII_WS.length)}]`, "gu"),
      "\v",
    );
  }

  get collapsed(): string {
    if (this.#collapsed === undefined) this.#index();
    return this.#collapsed as string;
  }

  cpOf(unit: number): number {
    if (this.#unitCp === undefined) this.#index();
    return (this.#unitCp as Int32Array)[unit];
  }

  unitOf(cp: number): number {
    if (this.#cpUnit === undefined) this.#index();
    return (this.#cpUnit as Int32Array)[cp];
  }

  #index(): void {
    const t = this.text;
    const cpUnit: number[] = [];
    const unitCp = new Int32Array(t.length + 1);
    const codes: number[] = [];
    for (let u = 0; u < t.length;) {
      const cp = t.codePointAt(u) as number;
      unitCp[u] = cpUnit.length;
      cpUnit.push(u);
      codes.push(collapse(cp));
      u += cp > 0xffff ? 2 : 1;
    }
    unitCp[t.length] = cpUnit.length;
    cpUnit.push(t.length);
    this.#cpUnit = Int32Array.from(cpUnit);
    this.#unitCp = unitCp;
    let s = "";
    for (let i = 0; i < codes.length; i += 4096) {
      s += String.fromCharCode(...codes.slice(i, i + 4096));
    }
    this.#collapsed = s;
  }
}

/**
 * Splits `text` by the steps; the pieces concatenate to `text`. Pieces are [start, end) UTF-16
 * offsets while splitting. An empty match splits where it stands and adds no piece (llama.cpp
 * emits an empty word there, which tokenizes to nothing).
 */
export function regexSplit(text: string, steps: readonly CompiledStep[]): string[] {
  if (text.length === 0) return [];
  const t = new SplitText(text);
  let pieces: number[] = [0, text.length];
  for (const { mode, re } of steps) {
    const next: number[] = [];
    for (let k = 0; k < pieces.length; k += 2) {
      const a = pieces[k];
      const b = pieces[k + 1];
      const byCp = mode === "category";
      const base = byCp ? t.cpOf(a) : a;
      const subject = byCp
        ? t.collapsed.slice(base, t.cpOf(b))
        : (mode === "wide" ? t.wide : text).slice(a, b);
      const toUnit = (i: number) => (byCp ? t.unitOf(base + i) : a + i);
      re.lastIndex = 0;
      let last = a;
      for (let m = re.exec(subject); m !== null; m = re.exec(subject)) {
        const start = toUnit(m.index);
        const end = toUnit(m.index + m[0].length);
        if (start > last) next.push(last, start);
        if (end > start) next.push(start, end);
        last = end;
        if (m[0].length === 0) {
          re.lastIndex = m.index + (!byCp && (subject.codePointAt(m.index) ?? 0) > 0xffff ? 2 : 1);
        }
      }
      if (last < b) next.push(last, b);
    }
    pieces = next;
  }
  const out: string[] = [];
  for (let k = 0; k < pieces.length; k += 2) out.push(text.slice(pieces[k], pieces[k + 1]));
  return out;
}
