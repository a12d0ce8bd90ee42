// Renders the chat-template fixtures (chat_templates.json in this folder) with @huggingface/jinja, the Jinja engine of
// transformers.js, the way transformers.js's apply_chat_template calls it:
//   template.render({ messages, add_generation_prompt, tools, documents, ...special_tokens, ...kwargs })
// with tools and documents null unless the conversation has tools (Python transformers passes None for both too).
// The file keeps, per template, its source, its special tokens, which conversations and keyword variants to render;
// this script rewrites every template's "cases" (text, or the error the template raises). strftime_now reads a fixed
// clock (data.clock, local time) so that templates that print today's date (SmolLM3) render the same on every run.
//
// Rerun (from any empty folder, with Node 18+):
//   npm install @huggingface/jinja@0.5.11
//   node <this folder>/make_fixtures.mjs <this folder>/chat_templates.json
// Then check the same renderings with Python's jinja2 as transformers configures it:
//   python3 <this folder>/verify_python.py <this folder>/chat_templates.json
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const req = createRequire(join(process.cwd(), 'package.json'));
const { Template } = await import(req.resolve('@huggingface/jinja'));
const version = JSON.parse(readFileSync(join(process.cwd(), 'node_modules/@huggingface/jinja/package.json'), 'utf8')).version;
const path = process.argv[2];
const data = JSON.parse(readFileSync(path, 'utf8'));
let count = 0;
data.clock ??= '2025-03-07T14:05:09';
const clock = new Date(data.clock);
// @huggingface/jinja's strftime_now formats `new Date()`: a Date without arguments is the fixed clock here.
const RealDate = Date;
globalThis.Date = class extends RealDate {
  constructor(...args) { super(...(args.length ? args : [clock.getTime()])); }
  static now() { return clock.getTime(); }
};
for (const [name, t] of Object.entries(data.templates)) {
  const template = new Template(t.template);
  t.cases = [];
  for (const conversation of t.conversations) {
    const conv = data.conversations[conversation];
    for (const kwargs of t.kwargs) {
      for (const add_generation_prompt of [false, true]) {
        const c = { conversation, add_generation_prompt, kwargs };
        try {
          c.text = template.render({
            messages: conv.messages, add_generation_prompt, tools: conv.tools ?? null, documents: null,
            ...t.special_tokens, ...kwargs,
          });
        } catch (e) {
          c.error = String(e.message ?? e);
        }
        t.cases.push(c);
        count++;
      }
    }
  }
}
data.generator = `make_fixtures.mjs with @huggingface/jinja ${version}`;
writeFileSync(path, JSON.stringify(data, null, 1) + '\n');
console.log(`${count} renderings of ${Object.keys(data.templates).length} templates written to ${path}`);
