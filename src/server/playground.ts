/**
 * The playground's static files (plain HTML and JS beside this module), read once and served as
 * they are.
 */
const ASSETS = {
  "playground.html": "text/html; charset=utf-8",
  "playground.js": "text/javascript; charset=utf-8",
  "favicon.svg": "image/svg+xml",
} as const;

export type PlaygroundAsset = keyof typeof ASSETS;

const loaded = new Map<PlaygroundAsset, Promise<string>>();

async function read(name: PlaygroundAsset): Promise<string> {
  const url = new URL(`./${name}`, import.meta.url);
  if (url.protocol === "file:") return await Deno.readTextFile(url);
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot fetch ${url}: HTTP ${res.status}`);
  return await res.text();
}

export async function playgroundAsset(name: PlaygroundAsset): Promise<Response> {
  let text = loaded.get(name);
  if (!text) {
    text = read(name);
    loaded.set(name, text);
    text.catch(() => loaded.delete(name));
  }
  return new Response(await text, {
    headers: { "content-type": ASSETS[name], "cache-control": "no-cache" },
  });
}
