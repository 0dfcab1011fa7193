/** `hc`: the command-line face of the engine (node:util parseArgs; JSR's @std/cli is unreachable). */
import { parseArgs } from "node:util";
import { HcError } from "./errors.ts";
import { listDevices } from "./vk/mod.ts";

interface Command {
  summary: string;
  usage: string;
  run(args: string[]): Promise<void>;
}

const COMMANDS: Record<string, Command> = {
  devices: {
    summary: "list Vulkan devices and their limits",
    usage: "hc devices [--json]",
    run(args) {
      const { values } = parseArgs({ args, options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } } });
      if (values.help) return help("devices");
      const devices = listDevices();
      if (values.json) {
        console.log(JSON.stringify(devices, null, 2));
        return Promise.resolve();
      }
      for (const d of devices) {
        console.log(`[${d.index}] ${d.name} (${d.type}, Vulkan ${d.apiVersion})`);
        console.log(`    subgroup ${d.subgroupSize}${d.subgroupArithmetic ? " (arithmetic)" : ""}, ` +
          `shared memory ${d.maxComputeSharedMemoryBytes} B, push constants ${d.maxPushConstantsBytes} B`);
        console.log(`    max storage binding ${mib(d.maxStorageBufferRange)}, max allocation ${mib(d.maxAllocationBytes)}, ` +
          `f16 ${d.float16 ? "yes" : "no"}, int8 ${d.int8 ? "yes" : "no"}`);
      }
      return Promise.resolve();
    },
  },
};

function mib(bytes: number): string {
  return `${(bytes / (1 << 20)).toFixed(0)} MiB`;
}

function help(command?: string): Promise<void> {
  if (command && COMMANDS[command]) {
    console.log(`usage: ${COMMANDS[command].usage}\n\n${COMMANDS[command].summary}`);
  } else {
    console.log("usage: hc <command> [options]\n\ncommands:");
    for (const [name, c] of Object.entries(COMMANDS)) console.log(`  ${name.padEnd(10)} ${c.summary}`);
    console.log("\nRun `hc <command> --help` for a command's options.");
  }
  return Promise.resolve();
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    await help(rest[0]);
    return 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    console.error(`hc: unknown command "${name}"`);
    await help();
    return 2;
  }
  try {
    await command.run(rest);
    return 0;
  } catch (e) {
    if (e instanceof HcError) {
      console.error(`hc ${name}: ${e.code}: ${e.message}`);
      return 1;
    }
    if (String((e as { code?: unknown }).code ?? "").startsWith("ERR_PARSE_ARGS")) {
      console.error(`hc ${name}: ${e.message}`);
      return 2;
    }
    throw e;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
