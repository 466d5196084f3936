// Runs GGUF files in llama.cpp through node-llama-cpp's prebuilt CPU binaries.
//
//   node run_llama.mjs JOBS.json
//
// JOBS.json is an array of {"mode": "greedy"|"probs", "model": PATH, "count": N, "ids": [...]}. For each
// job one line of JSON is printed: {"job": i, "ids": [...]} with N greedy tokens after the prompt ids, or
// {"job": i, "top": [[[id, p], ...], ...]} with the N most likely next tokens at every prompt position,
// or {"job": i, "error": "..."}.
//
// The package is found under $FINCH_NODE_LLAMA_DIR/node_modules (npm i -E --prefix DIR node-llama-cpp@3.21.1).
import {readFileSync} from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";

const jobs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const prefix = process.env.FINCH_NODE_LLAMA_DIR;
const entry = prefix ? pathToFileURL(path.join(prefix, "node_modules", "node-llama-cpp", "dist", "index.js")).href : "node-llama-cpp";
const {getLlama, LlamaLogLevel} = await import(entry);
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});

async function run(job) {
    const model = await llama.loadModel({modelPath: job.model, useMmap: false});
    const context = await model.createContext({
        contextSize: 256, batchSize: 256, threads: 2, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32"
    });
    try {
        const sequence = context.getSequence();
        if (job.mode === "greedy") {
            const ids = [];
            for await (const token of sequence.evaluate(job.ids, {temperature: 0})) {
                ids.push(token);
                if (ids.length >= job.count) break;
            }
            return {ids};
        }
        const results = await sequence.controlledEvaluate(job.ids.map((t) => [t, {generateNext: {probabilities: true}}]));
        return {top: results.map((r) => [...r.next.probabilities.entries()].slice(0, job.count))};
    } finally {
        await context.dispose();
        await model.dispose();
    }
}

for (let i = 0; i < jobs.length; i++) {
    try {
        console.log(JSON.stringify({job: i, ...(await run(jobs[i]))}));
    } catch (e) {
        console.log(JSON.stringify({job: i, error: String(e && e.message ? e.message : e)}));
    }
}
await llama.dispose();
