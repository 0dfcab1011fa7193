// HC_LLAMACPP_THREADS: the CPU threads bench/llamacpp_node.ts picked for llama.cpp (its fastest
// here); unset or 0: node-llama-cpp's default.
export const cpuThreads = Number(process.env.HC_LLAMACPP_THREADS ?? 0) || undefined;
