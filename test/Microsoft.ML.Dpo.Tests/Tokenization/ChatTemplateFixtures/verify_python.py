# Renders every case of chat_templates.json with Python's jinja2 configured exactly as transformers'
# _compile_jinja_template does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, the generation
# tag, HF's tojson / raise_exception / strftime_now) and called as apply_chat_template calls it (tools=None,
# documents=None, the special tokens, the keyword arguments), and reports every case whose text (or error) differs
# from the stored one. Usage: python3 verify_python.py chat_templates.json [--write]   (needs jinja2 >= 3.1)
# With --write, a case where Python differs from transformers.js takes Python's result (Python transformers is the
# reference implementation) and keeps transformers.js's under "transformers_js".
import json, sys, datetime
import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

class AssistantTracker(Extension):
    tags = {"generation"}
    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render_generation"), [], [], body).set_lineno(lineno)
    def _render_generation(self, caller):
        return caller()

def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

CLOCK = None   # set from the file: the fixed time the fixtures were rendered at

def strftime_now(format):
    return CLOCK.strftime(format)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

data = json.load(open(sys.argv[1], encoding="utf-8"))
CLOCK = datetime.datetime.fromisoformat(data["clock"])
bad = total = 0
for name, t in data["templates"].items():
    template = env.from_string(t["template"])
    for c in t["cases"]:
        conv = data["conversations"][c["conversation"]]
        total += 1
        try:
            text, error = template.render(messages=conv["messages"], tools=conv.get("tools"), documents=None,
                                          add_generation_prompt=c["add_generation_prompt"], **t["special_tokens"], **c["kwargs"]), None
        except Exception as e:   # TemplateError (raise_exception), TypeError, UndefinedError...: apply_chat_template raises them all
            text, error = None, f"{type(e).__name__}: {e}"
        if (error is None) != ("error" not in c) or (text is not None and text != c.get("text")):
            bad += 1
            print(f"DIFFERS {name} {c['conversation']} gen={c['add_generation_prompt']} {c['kwargs']}\n  python: {text!r} {error or ''}\n  stored: {c.get('text')!r} {c.get('error', '')}")
            if "--write" in sys.argv:
                c["transformers_js"] = {"text": c["text"]} if "text" in c else {"error": c["error"]}
                c.pop("text", None); c.pop("error", None)
                if error is None: c["text"] = text
                else: c["error"] = error
if "--write" in sys.argv:
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
print(f"{total - bad} of {total} renderings identical in Python jinja2 {jinja2.__version__}")
sys.exit(1 if bad and "--write" not in sys.argv else 0)
