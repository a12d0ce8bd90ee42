# Writes jinja_semantics.json: small templates exercising each construct the interpreter supports, with what Python's
# jinja2 renders for them when configured exactly as transformers' _compile_jinja_template (the reference the C# tests
# compare with). Rerun: python3 make_semantics.py   (jinja2 >= 3.1; writes beside this script)
import json, os, datetime
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

CLOCK = datetime.datetime(2025, 3, 7, 14, 5, 9)
def strftime_now(fmt):
    return CLOCK.strftime(fmt)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

M=[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi ünïcode 漢字 🚀"},{"role":"assistant","content":"  Hello!\n"}]
T=[
 "{{ x }}|{{ y }}|{{ z }}|{{ n }}|{{ f }}|{{ l }}|{{ d }}|{{ b }}|{{ undefinedvar }}",
 "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1e-5 }} {{ 1e16 }} {{ 1.5e15 }} {{ 0.1 + 0.2 }} {{ 3.0 }} {{ 10/5 }}",
 "{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }}{% if loop.previtem is defined %}p{{ loop.previtem.role }}{% endif %}{% if loop.nextitem is defined %}n{{ loop.nextitem.role }}{% endif %};{% endfor %}",
 "{% for m in [] %}x{% else %}empty{% endfor %}",
 "{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role }}{% endfor %}",
 "{% set ns = namespace(found=false, n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if m.role == 'user' %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.found }} {{ ns.n }}",
 "{% set x = 1 %}{% for i in range(3) %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}",
 "{% set x %}  block {{ 1 + 1 }} {% endset %}[{{ x }}]",
 "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('a') }} {{ greet('b', '?') }} {{ greet(name='c', punct='.') }}",
 "{% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}inner{% endcall %}",
 "{% macro wrap2() %}<{{ caller('z') }}>{% endmacro %}{% call(v) wrap2() %}got {{ v }}{% endcall %}",
 "{% filter upper %}hello {{ 'x' }}{% endfilter %}",
 "{% raw %}{{ not rendered }}{% endraw %}",
 "{{ [1, 2, 3][1:] }} {{ 'hello'[::-1] }} {{ 'hello'[1:3] }} {{ [1,2,3][-1] }} {{ messages[-1].content }}",
 "{{ 'a' ~ 1 ~ none }} {{ 'ab' in 'cab' }} {{ 1 in [1,2] }} {{ 'k' in {'k': 1} }} {{ 3 not in [1] }}",
 "{{ 'yes' if x else 'no' }} {{ 'y' if not x }}|{{ x and y }} {{ x or y }} {{ not x }}",
 "{{ x is defined }} {{ q is undefined }} {{ none is none }} {{ x is string }} {{ n is number }} {{ d is mapping }} {{ l is iterable }} {{ l is sequence }} {{ b is boolean }} {{ b is true }} {{ b is false }} {{ n is equalto 3 }} {{ n is odd }} {{ n is even }} {{ 9 is divisibleby 3 }} {{ n is not none }}",
 "{{ '  a b  ' | trim }}|{{ 'aBc' | upper }}|{{ 'aBc' | lower }}|{{ 'hello world' | capitalize }}|{{ 'hello wORLD-x (y' | title }}|{{ l | length }}|{{ 'abc' | count }}|{{ l | first }}|{{ l | last }}|{{ l | join(', ') }}|{{ 'aaa' | replace('a', 'b', 2) }}",
 "{{ q | default('dflt') }} {{ '' | default('e', true) }} {{ d | items | list }} {{ d.items() | list }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.get('k') }} {{ d.get('zz', 5) }} {{ d.get('zz') }}",
 "{{ '42' | int }} {{ '4.7' | int }} {{ 'x' | int }} {{ '2.5' | float }} {{ -3 | abs }} {{ 2.5 | round }} {{ 3.14159 | round(2) }} {{ 3 | round }} {{ 2.7 | round(0, 'floor') }} {{ 5 | string }} {{ 'ab' | list }}",
 "{{ messages | tojson }}\n{{ messages | tojson(indent=2) }}\n{{ {'a': [1, 2.5, none, true], 'b': {}} | tojson(indent=4) }}\n{{ d | tojson(sort_keys=true) }}\n{{ 'é\"\\\\\\n\\t' | tojson }}\n{{ 'é' | tojson(ensure_ascii=true) }}",
 "{{ 'a\nb\n\nc' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(4, blank=true) }}",
 "{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | list }} {{ messages | rejectattr('role', 'eq', 'user') | map(attribute='role') | join(',') }} {{ [1, 0, 2] | select | list }} {{ [1, 2, 3, 4] | select('odd') | list }} {{ [1, 2, 3] | reject('even') | list }} {{ ['a', 'B'] | map('upper') | list }}",
 "{{ ['b', 'A', 'a', 'c'] | unique | list }} {{ ['b', 'A', 'c'] | sort }} {{ ['b', 'A', 'c'] | sort(reverse=true) }} {{ messages | sort(attribute='role') | map(attribute='role') | list }} {{ [1,2,3] | reverse | list }} {{ 'abc' | reverse }} {{ [1,2,3,4,5] | batch(2) | list }} {{ '<a>&' | e }} {{ '<a>' | safe }}",
 "{{ '  x  '.strip() }}|{{ 'xxaxx'.lstrip('x') }}|{{ 'xxaxx'.rstrip('x') }}|{{ 'a b  c'.split() }}|{{ 'a,b,,c'.split(',') }}|{{ 'a,b,c'.split(',', 1) }}|{{ 'abc'.startswith('ab') }}|{{ 'abc'.endswith(('x', 'c')) }}|{{ 'aB'.upper() }}{{ 'aB'.lower() }}|{{ \"they're bill's\".title() }}|{{ 'aaa'.replace('a', 'b') }}|{{ '{} and {name}'.format(1, name='n') }}",
 "{{- '  x  ' -}}  \n  {{ 'y' }}\n{%- if true %}\n  z\n{% endif -%}\n   end",
 "line1\n    {% if true %}\n    inside\n    {% endif %}\nline2\n  {# comment #}\nline3\n",
 "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
 "{{ strftime_now('%Y-%m-%d %d %B %b %H:%M:%S') }}",
 "{% generation %}gen{% endgeneration %}rest",
 "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}{{ loop_messages | length }}",
 "{{ raise_exception('Conversation roles must alternate') }}",
 "{{ [1, 'a', none, true, 1.5, [2], {'k': 'v'}] }} {{ (1,) }} {{ (1, 'b') }} {{ {'a': 1} }} {{ \"it's\" }} {{ ['it\\'s', 'q\"'] }}",
 "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}",
 "{{ undefinedvar.attr }}",
 "{{ 1 + 'a' }}",
 "{% for x in 5 %}{% endfor %}",
 "{{ messages[0].nope is defined }} {{ messages[10] is defined }} {{ none.x is defined }}",
 "{% if x %}\n  {{- 'a' }}\n{% elif y %}b{% else %}c{% endif %}",
 "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ 1 == 1.0 }} {{ true == 1 }} {{ q == q }}",
 "{{ \"\\u00e9\\x41\\n\" }}{{ 'a' 'b' }}",
 "{%- for m in messages -%}\n    {{ m.role }}\n{%- endfor -%}",
 "  {%+ if true %}x{% endif %}\n{% if true +%}\nkept{% endif %}",
 "{{ x | default }}{{ q | default }}|{{ (messages | first).role }}|{{ messages | map(attribute='role') | first }}",
 "{% set d2 = {'a': 1, 'b': {'c': [1, 2]}} %}{{ d2.b.c[1] }} {{ d2['b']['c'] | length }}",
 "{{ 'x' * 3 }} {{ [1] * 2 }} {{ -n }} {{ +n }} {{ 10 - 2.5 }}",
 "{{ tools | tojson }}",
 "{%- set x = 'a' -%}\n{{ x }}\n{#- comment -#}\n{{ x }}",
 "{% for i in range(4) %}{{ loop.cycle('a', 'b') }}{% endfor %} {{ 2 is in [1, 2] }} {{ [0, 1, ''] | select | list }} {{ messages | map(attribute='nope', default='-') | list }}",
 "{{ d | tojson(separators=(',', ':')) }} {{ [1, [2, {}]] | tojson(indent='\t') }} {{ 1.0 | tojson }} {{ 1e100 | tojson }} {{ 'a\u2028b\x01' | tojson }}",
 "{% set greeting | upper %}hi {{ x }}{% endset %}{{ greeting }}|{% filter trim %}   padded   {% endfilter %}|{{ 'a.b.c'.split('.', 1) }}|{{ 'a b c'.rsplit(' ', 1) }}|{{ '  a  b '.split(None, 1) }}",
 "{% macro list(items) %}{% for i in items %}{{ caller(i) }}{% if not loop.last %}, {% endif %}{% endfor %}{% endmacro %}{% call(item) list([1, 2]) %}<{{ item }}>{% endcall %}",
 "  {#- comment -#}  \n  {# plain comment #}\nafter\n    {%- set y = 1 %}\n{{ y }}",
 "{% if true %}\n    yes\n{% else %}\n    no\n{% endif %}\n{% for m in messages %}\n  {{ m.role }}\n{% endfor %}\n",
 "{{ messages | selectattr('role', 'in', ['user', 'system']) | map(attribute='role') | join('+') }} {{ messages | rejectattr('content') | list | length }} {{ l | map('string') | join }} {{ [3, 1, 2] | sort | first }} {{ [3, 1, 2] | max }} {{ ['b', 'a'] | min }} {{ [1, 2.5] | sum }}",
 "{{ 'Hello World'.startswith('Hello', 0) }} {{ 'abcabc'.count('b') }} {{ 'abc'.find('c') }} {{ 'x-y'.replace('-', '') }} {{ 'ab'.upper().lower() }} {{ ' A '.strip().lower() ~ '!' }} {{ 'hello'[1] }} {{ 'héllo🦉'[-1] }} {{ 'héllo🦉' | length }}",
 "{{ (1, 2) | list }} {{ {'b': 1, 'a': 2} | dictsort }} {{ {'b': 1, 'a': 2} | items | list }} {{ namespace(a=1).a }} {{ dict(a=1, b='x') }} {{ range(2, 8, 3) | list }}",
 "{{ x ~ y ~ z }} {{ y is none and z is true }} {{ n > 2 and n < 4 }} {{ -n ** 2 }} {{ (1 + 2) * 3 }} {{ 7 // 2 * 2 }} {{ 2 ** 3 ** 2 }} {{ not n == 3 }} {{ 'a' if n is odd else 'b' }}",
]
V={"x":"str","y":None,"z":True,"n":3,"f":2.5,"l":[1,"two",3.0],"d":{"k":"v","n":1},"b":False,"messages":M,
   "tools":[{"type":"function","function":{"name":"get_weather","description":"Get wéather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]}

out = []
for t in T:
    case = {"template": t}
    try:
        case["text"] = env.from_string(t).render(**V)
    except Exception as e:
        case["error"] = f"{type(e).__name__}: {e}"
    out.append(case)
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "jinja_semantics.json"), "w", encoding="utf-8") as f:
    f.write(json.dumps({"generator": f"make_semantics.py with jinja2 {jinja2.__version__}", "clock": CLOCK.isoformat(), "variables": V, "cases": out}, ensure_ascii=False, indent=1) + "\n")
print(len(out), "cases")
