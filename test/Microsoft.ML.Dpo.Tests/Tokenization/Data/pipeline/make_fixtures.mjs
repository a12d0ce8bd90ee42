// Builds small tokenizer.json fixtures for the pipeline components the real-tokenizer kit (../shared/reference/tokenizers)
// does not exercise, and reference.json: what Hugging Face's Rust tokenizers (npm "tokenizers", the library Python
// transformers' fast tokenizers run on) and transformers.js give on TEXTS. The tests compare with "rust"; "tjs" is kept
// to show where transformers.js differs (it ignores single_word and Split behaviors other than Isolated/Removed, and
// never splits in Metaspace).
//
// Run from an npm folder with the packages installed, giving the kit folder (the fixtures take their vocabularies from
// the kit's gpt2 and mistral tokenizer.json):
//   npm install @huggingface/transformers@4.3.2 tokenizers@0.23.2
//   node <this folder>/make_fixtures.mjs <kit folder>
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const req = createRequire(join(process.cwd(), 'package.json'));
const kit = process.argv[2] ?? join(here, '..', '..', '..', '..', '..', '..', 'shared', 'reference', 'tokenizers');
const readJson = (p) => JSON.parse(readFileSync(p, 'utf8'));

// A byte-level vocabulary: GPT-2's 256 byte symbols and its first N merges.
function gpt2Model(n) {
  const g = readJson(join(kit, 'gpt2', 'tokenizer.json')).model;
  const merges = g.merges.slice(0, n).map((m) => (Array.isArray(m) ? m : m.split(' ')));
  const keep = new Set(Object.keys(g.vocab).filter((t) => g.vocab[t] < 256));
  for (const [a, b] of merges) { keep.add(a); keep.add(b); keep.add(a + b); }
  const vocab = Object.fromEntries(Object.entries(g.vocab).filter(([t]) => keep.has(t)).sort((x, y) => x[1] - y[1]));
  return { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges };
}

// A SentencePiece-style vocabulary: Mistral's <unk> <s> </s>, byte pieces, and its first N merges (original ids).
function mistralModel(n) {
  const m = readJson(join(kit, 'mistral', 'tokenizer.json')).model;
  const merges = m.merges.slice(0, n).map((x) => (Array.isArray(x) ? x : x.split(' ')));
  const keep = new Set(Object.keys(m.vocab).filter((t) => m.vocab[t] < 259));
  for (const [a, b] of merges) { keep.add(a); keep.add(b); keep.add(a + b); }
  const vocab = Object.fromEntries(Object.entries(m.vocab).filter(([t]) => keep.has(t)).sort((x, y) => x[1] - y[1]));
  return { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges };
}

const added = (id, content, o = {}) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: false, ...o });
const byteLevel = (useRegex) => ({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: useRegex });
const split = (pattern, behavior, invert = false) => ({ type: 'Split', pattern, behavior, invert });

function fixtures() {
  const g = gpt2Model(600), next = () => Math.max(...Object.values(g.vocab)) + 1;
  const base = next();
  const deepseekRegex = "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+";
  return {
    // DeepSeek-V3 / R1 layout: three Split steps then ByteLevel without its regex; LlamaTokenizerFast class (BOS by add_bos_token).
    'split-sequence': {
      json: { version: '1.0', truncation: null, padding: null,
        added_tokens: [added(base, '<｜begin▁of▁sentence｜>', { special: true }), added(base + 1, '<｜end▁of▁sentence｜>', { special: true }),
          added(base + 2, '<｜User｜>'), added(base + 3, '<think>')],
        normalizer: null,
        pre_tokenizer: { type: 'Sequence', pretokenizers: [split({ Regex: '\\p{N}{1,3}' }, 'Isolated'), split({ Regex: '[一-龥\u3040-ゟ゠-ヿ]+' }, 'Isolated'), split({ Regex: deepseekRegex }, 'Isolated'), byteLevel(false)] },
        post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<｜begin▁of▁sentence｜>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [{ Sequence: { id: 'A', type_id: 0 } }], special_tokens: { '<｜begin▁of▁sentence｜>': { id: '<｜begin▁of▁sentence｜>', ids: [base], tokens: ['<｜begin▁of▁sentence｜>'] } } },
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: g },
      config: { tokenizer_class: 'LlamaTokenizerFast', add_bos_token: true, add_eos_token: false, bos_token: '<｜begin▁of▁sentence｜>', eos_token: '<｜end▁of▁sentence｜>', clean_up_tokenization_spaces: false },
    },
    // Added-token flags: lstrip, rstrip, single_word, normalized (with a Lowercase normalizer); RobertaProcessing.
    'added-flags': {
      json: { version: '1.0', truncation: null, padding: null,
        added_tokens: [added(base, '<s>', { special: true }), added(base + 1, '</s>', { special: true }), added(base + 2, '<mask>', { special: true, lstrip: true }),
          added(base + 3, '<sep>', { rstrip: true }), added(base + 4, 'zq', { single_word: true }), added(base + 5, '<Up>', { normalized: true }),
          added(base + 6, '<RAW>'), added(base + 7, '<both>', { lstrip: true, rstrip: true })],
        normalizer: { type: 'Lowercase' },
        pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
        post_processor: { type: 'RobertaProcessing', sep: ['</s>', base + 1], cls: ['<s>', base], trim_offsets: true, add_prefix_space: false },
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: g },
      config: { tokenizer_class: 'RobertaTokenizerFast', bos_token: '<s>', eos_token: '</s>', clean_up_tokenization_spaces: false },
    },
    // Unicode normalizers, Replace by regex, Strip; Punctuation, Digits (individual), Split " " MergedWithNext.
    'normalizers-digits-punctuation': {
      json: { version: '1.0', truncation: null, padding: null, added_tokens: [added(base, '<|end|>', { special: true })],
        normalizer: { type: 'Sequence', normalizers: [{ type: 'NFKC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Strip', strip_left: true, strip_right: true }] },
        pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Punctuation', behavior: 'Isolated' }, { type: 'Digits', individual_digits: true }, split({ String: ' ' }, 'MergedWithNext'), byteLevel(false)] },
        post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: g },
      config: { tokenizer_class: 'PreTrainedTokenizerFast', eos_token: '<|end|>', clean_up_tokenization_spaces: false },
    },
    // Split behaviors: Contiguous, MergedWithPrevious, Removed, invert; WhitespaceSplit; Digits runs; NFD + StripAccents.
    'split-behaviors': {
      json: { version: '1.0', truncation: null, padding: null, added_tokens: [],
        normalizer: { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'StripAccents' }, { type: 'Prepend', prepend: '>' }] },
        pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'WhitespaceSplit' }, split({ Regex: '[.,]' }, 'Contiguous'), split({ String: '-' }, 'MergedWithPrevious'),
          split({ Regex: '_' }, 'Removed'), split({ Regex: '[a-z]+' }, 'Isolated', true), { type: 'Digits', individual_digits: false }, byteLevel(false)] },
        post_processor: null,
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: g },
      config: { clean_up_tokenization_spaces: false },
    },
    // Falcon's layout: Punctuation (Contiguous), ByteLevel with a prefix space and its regex, Digits runs, then 3-digit groups;
    // TemplateProcessing that appends EOS.
    'falcon-style': {
      json: { version: '1.0', truncation: null, padding: null, added_tokens: [added(base, '<|endoftext|>', { special: true }), added(base + 1, '>>TITLE<<', { special: true })],
        normalizer: null,
        pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Punctuation', behavior: 'Contiguous' }, { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
          { type: 'Digits', individual_digits: false }, split({ Regex: '[0-9][0-9][0-9]' }, 'Isolated')] },
        post_processor: { type: 'TemplateProcessing', single: [{ Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<|endoftext|>', type_id: 0 } }],
          pair: [{ Sequence: { id: 'A', type_id: 0 } }], special_tokens: { '<|endoftext|>': { id: '<|endoftext|>', ids: [base], tokens: ['<|endoftext|>'] } } },
        decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true }, model: g },
      config: { tokenizer_class: 'PreTrainedTokenizerFast', eos_token: '<|endoftext|>', clean_up_tokenization_spaces: false },
    },
    // SentencePiece-style BPE, Metaspace "always" without split, NFKD; the legacy decoder (Replace, ByteFallback, Fuse, Strip);
    // BertProcessing ([CLS] A [SEP]).
    'metaspace-always-nfkd': {
      json: (() => {
        const m = mistralModel(600);
        return { version: '1.0', truncation: null, padding: null,
          added_tokens: [added(0, '<unk>', { special: true }), added(1, '<s>', { special: true }), added(2, '</s>', { special: true })],
          normalizer: { type: 'NFKD' },
          pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: false },
          post_processor: { type: 'BertProcessing', sep: ['</s>', 2], cls: ['<s>', 1] },
          decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] }, model: m };
      })(),
      config: { tokenizer_class: 'PreTrainedTokenizerFast', bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', clean_up_tokenization_spaces: false },
    },
    // SentencePiece-style BPE with a Metaspace pre-tokenizer (prepend_scheme "first", split), as Llama 2 with legacy: false;
    // TemplateProcessing with BOS and EOS (no Llama class: tokenizer.json's post-processor).
    'metaspace-first': {
      json: (() => {
        const m = mistralModel(600);
        return { version: '1.0', truncation: null, padding: null,
          added_tokens: [added(0, '<unk>', { special: true }), added(1, '<s>', { special: true }), added(2, '</s>', { special: true })],
          normalizer: null,
          pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true },
          post_processor: { type: 'TemplateProcessing', single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
            pair: [{ Sequence: { id: 'A', type_id: 0 } }], special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] }, '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } } },
          decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }, { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: true }] }, model: m };
      })(),
      config: { tokenizer_class: 'PreTrainedTokenizerFast', bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', clean_up_tokenization_spaces: false },
    },
  };
}

const TEXTS = [
  '', ' ', 'Hello world', 'Hello world!', ' leading', 'trailing ', 'two  spaces', 'a\nb\n\nc', 'tab\there',
  "I've 12345 apples, don't you?", '3.14159 and 1,000,000', 'x-y-z -- end-', 'snake_case_name __init__', 'a.b,,c...d',
  'Ünïcödé résumé', 're\u0301sume\u0301', 'ﬁ ligature ｆｕｌｌ width', '今天天气很好。漢字かなカナ', '한국어 텍스트', '🙂 emoji 👩\u200d🔬',
  '𝐇𝐞𝐥𝐥𝐨 math bold', 'CamelCaseWord ALLCAPS', 'email me@example.com now', '<think>reason</think>answer',
  '<｜User｜>Hi<｜end▁of▁sentence｜>', '<｜begin▁of▁sentence｜>twice', 'word <mask> word', 'word<mask>word', 'a <mask>', '<sep>  next',
  'zq alone', 'xzq inside', 'zq,comma', '_zq_', 'say <Up> and <UP> and <up>', '<RAW> <raw>', 'x  <both>  y', '<s>Hello</s>', 'x</s>y',
  'İstanbul ΟΔΟΣ ΣΑΣ Σ', 'hello\u2581world', '   many   spaces   ', 'end.', 'ÀÉÎÕÜ', 'Straße', 'ǅ digraph', '<|end|>', 'digits 2025-12-01', '>>TITLE<<Falcon!!! 1234567 (ok)...', 'x</s>y <s>z',
];

const tjsPath = req.resolve('@huggingface/transformers');
const { AutoTokenizer, env } = await import(pathToFileURL(tjsPath).href);
const { Tokenizer } = req('tokenizers');
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = here + '/';
const version = (name) => readJson(join(process.cwd(), 'node_modules', name, 'package.json')).version;
const out = { generator: 'make_fixtures.mjs', versions: { tokenizers: version('tokenizers'), '@huggingface/transformers': version('@huggingface/transformers') }, texts: TEXTS, tokenizers: {} };
for (const [name, f] of Object.entries(fixtures())) {
  const dir = join(here, name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(f.json));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(f.config, null, 2) + '\n');
  const rust = Tokenizer.fromFile(join(dir, 'tokenizer.json'));
  const tjs = await AutoTokenizer.from_pretrained(name);
  const cls = (f.config.tokenizer_class ?? '').replace(/Fast$/, '');
  const pythonPost = ['LlamaTokenizer', 'GemmaTokenizer'].includes(cls);
  const bosId = f.json.added_tokens.find((t) => t.content === f.config.bos_token)?.id;
  const r = { rust: { ids: [], ids_special: [], decoded: [], decoded_skip: [] }, tjs: { ids: [], ids_special: [], decoded: [], decoded_skip: [] } };
  for (const text of TEXTS) {
    const ids = Array.from((await rust.encode(text, null, { addSpecialTokens: false })).getIds());
    let special = Array.from((await rust.encode(text, null, { addSpecialTokens: true })).getIds());
    if (pythonPost) special = [...(f.config.add_bos_token ?? true ? [bosId] : []), ...ids];
    r.rust.ids.push(ids);
    r.rust.ids_special.push(special);
    r.rust.decoded.push(ids.length ? await rust.decode(ids, false) : '');
    r.rust.decoded_skip.push(special.length ? await rust.decode(special, true) : '');
    const tids = tjs.encode(text, { add_special_tokens: false });
    const tsp = pythonPost ? [...(f.config.add_bos_token ?? true ? [bosId] : []), ...tids] : tjs.encode(text, { add_special_tokens: true });
    r.tjs.ids.push(tids);
    r.tjs.ids_special.push(tsp);
    r.tjs.decoded.push(ids.length ? tjs.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : '');
    r.tjs.decoded_skip.push(special.length ? tjs.decode(special, { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : '');
  }
  const differ = TEXTS.filter((_, i) => JSON.stringify(r.rust.ids[i]) !== JSON.stringify(r.tjs.ids[i]) || JSON.stringify(r.rust.ids_special[i]) !== JSON.stringify(r.tjs.ids_special[i])
    || r.rust.decoded[i] !== r.tjs.decoded[i] || r.rust.decoded_skip[i] !== r.tjs.decoded_skip[i]);
  r.tjs_differs_on = differ;
  out.tokenizers[name] = r;
  console.log(`${name}: transformers.js differs from Rust on ${differ.length} of ${TEXTS.length} texts`);
}
// A 200,000-character line without spaces (one pre-token: quadratic BPE took seconds to minutes on such lines): the count
// and SHA-256 of the ids Rust gives ("1,2,3" joined), for each fixture. The letters come from a 32-bit LCG, as the test makes them.
const lcg = (n) => { let x = 1, s = ''; for (let i = 0; i < n; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; s += String.fromCharCode(97 + ((x >>> 16) % 26)); } return s; };
const { createHash } = await import('node:crypto');
const longText = lcg(200000);
out.long_line = { length: longText.length, tokenizers: {} };
for (const name of Object.keys(out.tokenizers)) {
  const ids = Array.from((await Tokenizer.fromFile(join(here, name, 'tokenizer.json')).encode(longText, null, { addSpecialTokens: false })).getIds());
  out.long_line.tokenizers[name] = { count: ids.length, sha256: createHash('sha256').update(ids.join(',')).digest('hex') };
}
out.long_line.kit = {};
for (const name of ['gpt2', 'llama3', 'mistral']) {
  const ids = Array.from((await Tokenizer.fromFile(join(kit, name, 'tokenizer.json')).encode(longText, null, { addSpecialTokens: false })).getIds());
  out.long_line.kit[name] = { count: ids.length, sha256: createHash('sha256').update(ids.join(',')).digest('hex') };
}
// The kit's 216 texts joined by "\n", 4 times: one long text (one word for SentencePiece-style tokenizers without a pre-tokenizer).
const joined = Array(4).fill(readJson(join(kit, 'reference.json')).texts.join('\n')).join('\n');
out.joined_kit_texts = { length: joined.length, tokenizers: {} };
for (const name of ['mistral', 'gemma3', 'llama3', 'qwen3']) {
  const ids = Array.from((await Tokenizer.fromFile(join(kit, name, 'tokenizer.json')).encode(joined, null, { addSpecialTokens: false })).getIds());
  out.joined_kit_texts.tokenizers[name] = { count: ids.length, sha256: createHash('sha256').update(ids.join(',')).digest('hex') };
}
writeFileSync(join(here, 'reference.json'), JSON.stringify(out).replaceAll('],[', '],\n[') + '\n');
