// transformers.js's side of the tokenizer suite (TokenizerSuite.cs): encodes a text file with a tokenizer folder and prints
// {"seconds": [...], "count": N, "sha256": "..."} (ids without special tokens, "1,2,3" hashed). Usage:
//   node tokenizer_throughput.mjs <npm folder with @huggingface/transformers> <tokenizer folder> <text file> <repeats>
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { join, dirname, basename } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createHash } from 'node:crypto';

const [npmFolder, folder, textFile, repeatsArg] = process.argv.slice(2);
const req = createRequire(join(npmFolder, 'package.json'));
const { AutoTokenizer, env } = await import(pathToFileURL(req.resolve('@huggingface/transformers')).href);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = dirname(folder) + '/';
const tok = await AutoTokenizer.from_pretrained(basename(folder));
const text = readFileSync(textFile, 'utf8');
tok.encode('warm up', { add_special_tokens: false });
const seconds = [];
let ids = [];
for (let i = 0; i < Number(repeatsArg ?? 1); i++) {
  const start = process.hrtime.bigint();
  ids = tok.encode(text, { add_special_tokens: false });
  seconds.push(Number(process.hrtime.bigint() - start) / 1e9);
}
console.log(JSON.stringify({ seconds, count: ids.length, sha256: createHash('sha256').update(ids.join(',')).digest('hex') }));
