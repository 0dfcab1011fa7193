/**
 * Server-sent events in the shape OpenAI streams use: `data: <json>\n\n` per event and
 * `data: [DONE]\n\n` at the end. The stream is pulled, so a slow reader slows generation instead of
 * buffering it, and a reader that goes away cancels the stream, which stops the generation.
 */

const encoder = new TextEncoder();

export const SSE_HEADERS: Readonly<Record<string, string>> = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  "x-accel-buffering": "no",
};

/** One `data:` event (a payload never holds a newline: JSON.stringify escapes them). */
export function sseEvent(data: string): Uint8Array {
  return encoder.encode(`data: ${data}\n\n`);
}

export interface SseHooks {
  /** The client disconnected: runs before the source is returned, to abort what it waits on. */
  onCancel?: (reason: unknown) => void;
  /** Runs once when the stream is over in any way (ended, failed, or cancelled and returned). */
  onEnd?: () => void;
}

/** A byte stream of the `data` payloads that `source` yields. */
export function sseStream(
  source: AsyncGenerator<string, void, undefined>,
  hooks: SseHooks = {},
): ReadableStream<Uint8Array> {
  let cancelled = false;
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    hooks.onEnd?.();
  };
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let r: IteratorResult<string, void>;
      try {
        r = await source.next();
      } catch (e) {
        // The source turns failures into error events itself; reaching here is a bug upstream,
        // and the client learns of it by the stream ending without [DONE].
        end();
        if (!cancelled) controller.error(e);
        return;
      }
      if (cancelled) return;
      if (r.done) {
        end();
        controller.close();
      } else {
        controller.enqueue(sseEvent(r.value));
      }
    },
    async cancel(reason) {
      cancelled = true;
      hooks.onCancel?.(reason);
      await source.return(undefined).catch(() => {});
      end();
    },
  }, { highWaterMark: 0 });
}

/** The `data` payloads of an SSE byte stream, in order ("[DONE]" included). */
export async function* parseSse(
  body: ReadableStream<Uint8Array>,
): AsyncGenerator<string, void, undefined> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of body) {
    buf += decoder.decode(chunk, { stream: true });
    for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
      const event = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) =>
        l.slice(5).trimStart()
      );
      if (data.length > 0) yield data.join("\n");
    }
  }
}
