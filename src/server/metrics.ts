/**
 * Server counters and their Prometheus text exposition (format 0.0.4). Counters only grow;
 * gauges are sampled when /metrics is read.
 */
import type { CacheCounters } from "./stats.ts";
import type { PromptCacheStats } from "./prompt_cache.ts";

export interface MetricGauges {
  modelReady: boolean;
  /** Requests admitted and waiting for a generation slot. */
  queueDepth: number;
  /** Requests generating now. */
  activeRequests: number;
  /** Device steps queued or running in the engine's DeviceQueue. */
  deviceQueueDepth: number;
  sessions: number;
  deviceKvBytes: number;
  promptCache: PromptCacheStats;
}

interface Sample {
  labels?: Record<string, string>;
  value: number;
}

function escapeLabel(v: string): string {
  return v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

function family(name: string, type: "counter" | "gauge", help: string, samples: Sample[]): string {
  const lines = [`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`];
  for (const s of samples) {
    const labels = s.labels && Object.keys(s.labels).length > 0
      ? "{" + Object.entries(s.labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",") + "}"
      : "";
    lines.push(`${name}${labels} ${formatValue(s.value)}`);
  }
  return lines.join("\n");
}

export class Metrics {
  /** `${route} ${status}` → count. */
  readonly #requests = new Map<string, number>();
  #promptTokens = 0;
  #completionTokens = 0;
  #decodeMs = 0;
  #prefillMs = 0;
  #lastDecodeTokensPerSecond = 0;
  #generations = 0;
  #aborted = 0;
  #failed = 0;
  #driftChecks = 0;
  #triggers = 0;
  #bytesMoved = 0;

  recordRequest(route: string, status: number): void {
    const key = `${route} ${status}`;
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
  }

  /** One finished (or aborted) generation. */
  recordGeneration(g: {
    promptTokens: number;
    completionTokens: number;
    prefillMs: number;
    decodeMs: number;
    decodeTokensPerSecond: number;
    aborted: boolean;
    /** It ended with an error (not the client going away). */
    failed: boolean;
    counters: CacheCounters;
  }): void {
    this.#generations++;
    if (g.aborted) this.#aborted++;
    if (g.failed) this.#failed++;
    this.#promptTokens += g.promptTokens;
    this.#completionTokens += g.completionTokens;
    this.#prefillMs += g.prefillMs;
    this.#decodeMs += g.decodeMs;
    if (!g.aborted && !g.failed && g.completionTokens > 1) {
      this.#lastDecodeTokensPerSecond = g.decodeTokensPerSecond;
    }
    this.#driftChecks += g.counters.driftChecks;
    this.#triggers += g.counters.triggers;
    this.#bytesMoved += g.counters.bytesMoved;
  }

  render(g: MetricGauges): string {
    const mem = Deno.memoryUsage();
    const requests: Sample[] = [...this.#requests].map(([key, value]) => {
      const [route, status] = key.split(" ");
      return { labels: { route, status }, value };
    });
    const meanTps = this.#decodeMs > 0 ? (this.#completionTokens * 1000) / this.#decodeMs : 0;
    return [
      family(
        "hc_requests_total",
        "counter",
        "HTTP requests answered, by route and status.",
        requests,
      ),
      family("hc_generations_total", "counter", "Generations run (finished, aborted or failed).", [{
        value: this.#generations,
      }]),
      family(
        "hc_generations_aborted_total",
        "counter",
        "Generations stopped because the client went away.",
        [{
          value: this.#aborted,
        }],
      ),
      family(
        "hc_generations_failed_total",
        "counter",
        "Generations that ended with an error after they started.",
        [{ value: this.#failed }],
      ),
      family("hc_prompt_tokens_total", "counter", "Prompt tokens prefilled.", [{
        value: this.#promptTokens,
      }]),
      family("hc_completion_tokens_total", "counter", "Tokens generated.", [{
        value: this.#completionTokens,
      }]),
      family("hc_prefill_seconds_total", "counter", "Time spent in prefill.", [{
        value: this.#prefillMs / 1000,
      }]),
      family("hc_decode_seconds_total", "counter", "Time spent decoding.", [{
        value: this.#decodeMs / 1000,
      }]),
      family(
        "hc_decode_tokens_per_second",
        "gauge",
        "Decode speed of the last finished generation.",
        [{
          value: this.#lastDecodeTokensPerSecond,
        }],
      ),
      family(
        "hc_decode_tokens_per_second_mean",
        "gauge",
        "Generated tokens per second of decode time, all requests.",
        [{
          value: meanTps,
        }],
      ),
      family("hc_queue_depth", "gauge", "Requests waiting for a generation slot.", [{
        value: g.queueDepth,
      }]),
      family("hc_active_requests", "gauge", "Requests generating now.", [{
        value: g.activeRequests,
      }]),
      family("hc_device_queue_depth", "gauge", "Device steps queued or running.", [{
        value: g.deviceQueueDepth,
      }]),
      family("hc_sessions", "gauge", "Sessions holding device KV memory.", [{ value: g.sessions }]),
      family(
        "hc_device_kv_bytes",
        "gauge",
        "Device memory held by the KV caches of live sessions.",
        [{
          value: g.deviceKvBytes,
        }],
      ),
      family(
        "hc_prompt_cache_sessions",
        "gauge",
        "Finished conversations parked for prompt reuse.",
        [{ value: g.promptCache.sessions }],
      ),
      family(
        "hc_prompt_cache_device_kv_bytes",
        "gauge",
        "Device memory held by the KV caches of parked sessions.",
        [{ value: g.promptCache.deviceKvBytes }],
      ),
      family(
        "hc_prompt_cache_hits_total",
        "counter",
        "Requests that continued a parked session.",
        [{ value: g.promptCache.hits }],
      ),
      family(
        "hc_prompt_cache_misses_total",
        "counter",
        "Requests that found no parked session to continue.",
        [{ value: g.promptCache.misses }],
      ),
      family(
        "hc_prompt_cache_cached_tokens_total",
        "counter",
        "Prompt tokens reused instead of prefilled.",
        [{ value: g.promptCache.cachedTokens }],
      ),
      family(
        "hc_prompt_cache_evictions_total",
        "counter",
        "Parked sessions freed to stay within the bounds.",
        [{ value: g.promptCache.evictions }],
      ),
      family("hc_drift_checks_total", "counter", "HeteroCache drift checks run.", [{
        value: this.#driftChecks,
      }]),
      family("hc_triggers_total", "counter", "HeteroCache retrievals triggered.", [{
        value: this.#triggers,
      }]),
      family("hc_bytes_moved_total", "counter", "Bytes moved from host KV to the device.", [{
        value: this.#bytesMoved,
      }]),
      family("hc_model_ready", "gauge", "1 when the model is loaded and serving.", [{
        value: g.modelReady ? 1 : 0,
      }]),
      family("process_resident_memory_bytes", "gauge", "Resident set size of the server process.", [
        {
          value: mem.rss,
        },
      ]),
      family("hc_heap_used_bytes", "gauge", "V8 heap in use.", [{ value: mem.heapUsed }]),
      family("hc_heap_total_bytes", "gauge", "V8 heap reserved.", [{ value: mem.heapTotal }]),
      family(
        "hc_external_memory_bytes",
        "gauge",
        "Memory held outside the V8 heap by JS objects.",
        [{
          value: mem.external,
        }],
      ),
    ].join("\n") + "\n";
  }
}

/** Parses Prometheus text into `name{labels}` → value (for tests and the playground). */
export function parsePrometheus(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const sp = line.lastIndexOf(" ");
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}
