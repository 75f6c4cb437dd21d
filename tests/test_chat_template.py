"""Chat templates: HF-compatible rendering, fallback, and a sandbox that holds against hostile templates."""
import json
import sys
import time

import jinja2
import jinja2.ext
import pytest

from edgeslim.chat_template import FALLBACK_TEMPLATE, render_chat
from edgeslim.errors import EdgeslimError, FormatError, InputError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_chatml_renders():
    assert render_chat(CHATML, MSGS) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(CHATML, MSGS, add_generation_prompt=False).endswith("Hi<|im_end|>\n")


def test_hf_template_features():
    """bos/eos tokens, trim_blocks/lstrip_blocks, loop controls, namespace, tojson, strftime_now, generation."""
    template = """{{ bos_token }}
{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
[{{ m.role }}] {{ m.content | tojson }}
{% endfor %}
{% generation %}{{ ns.n }}{% endgeneration %}|{{ strftime_now('%Y')|length }}|{{ extra }}{{ eos_token }}"""
    out = render_chat(template, MSGS + [{"role": "user", "content": "<é>"}],
                      bos_token="<s>", eos_token="</s>", extra="X")
    assert out == '<s>\n[user] "Hi"\n[user] "<é>"\n2|4|X</s>'


TOOLS_TEMPLATE = """{{- bos_token }}
{%- set sys = messages | selectattr('role', 'equalto', 'system') | map(attribute='content') | list %}
{%- if sys %}<|sys|>{{ sys | join(' ') | trim }}
{% endif %}
{%- if tools %}Tools: {{ tools | map(attribute='name') | join(', ') }}
{% for t in tools %}{{ t | tojson(indent=2) }}
{% endfor %}{% endif %}
{%- for m in messages | rejectattr('role', 'equalto', 'system') %}
{{- '<|' ~ m.role ~ '|>' ~ (m.content | default('', true)) }}{% if not loop.last %}{{ '\n' }}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{ '\n<|assistant|>' }}{% endif %}
{{- ' n=%d' % (messages | length) }}{{ ' {} {}'.format(messages[-1].role, (messages|last).content|upper) }}
{%- for k, v in (messages[0] | dictsort) %}{{ ' ' ~ k }}{% endfor %}"""


def test_guards_do_not_change_legit_output():
    """A template using filters, generators, %, format, ~ and tojson renders as plain jinja2 renders it."""
    msgs = [{"role": "system", "content": "  Be nice. "}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": None}, {"role": "user", "content": "Go"}]
    tools = [{"name": "f", "parameters": {"type": "object", "maximum": 4294967295}}, {"name": "g"}]
    plain = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    plain.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    want = plain.from_string(TOOLS_TEMPLATE).render(messages=msgs, tools=tools, bos_token="<s>",
                                                    add_generation_prompt=True)
    got = render_chat(TOOLS_TEMPLATE, msgs, bos_token="<s>", tools=tools)
    assert got == want and '"maximum": 4294967295' in got and got.endswith("<|assistant|> n=4 user GO content role")


def test_raise_exception_is_input_error():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('roles must alternate') }}{% endif %}"
    with pytest.raises(InputError, match="roles must alternate"):
        render_chat(template, MSGS)


def test_fallback_template():
    assert render_chat(None, MSGS) == render_chat(FALLBACK_TEMPLATE, MSGS) == (
        "System: Be brief.\nUser: Hi\nAssistant:")
    two = MSGS + [{"role": "assistant", "content": "Hello."}, {"role": "tool", "content": "42"}]
    assert render_chat("", two, add_generation_prompt=False).endswith("User: Hi\nAssistant: Hello.\nTool: 42")
    assert render_chat(None, []) == "\nAssistant:"


@pytest.mark.parametrize("template", [
    "{{ messages.__class__.__mro__ }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ ''.__class__ }}",
    "{{ messages|attr('__class__') }}",
    "{{ raise_exception.__globals__ }}",
    "{% set ns = namespace(_x=1) %}",
])
def test_sandbox_escapes_refused(template):
    with pytest.raises(FormatError, match="sandbox") as e:
        render_chat(template, MSGS)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",  # output over 1 MB
    "{{ 'a' * 10**9 }}",
    "{% set a = 'a' * 900000 %}{{ a ~ a ~ a }}",
    "{% set a = 'a' * 900000 %}{{ a|replace('a', a) }}",
    "{% set a = 'a' * 900000 %}{{ a.replace('a', a) }}",
    "{% set a = 'a' * 900000 %}{{ ([a] * 1000)|join }}",
    "{% set a = 'a' * 900000 %}{{ range(100000)|map('replace', '', a)|join }}",
    "{{ '{:>999999999}'.format(1) }}",
    "{{ '%999999999d' % 1 }}",
    "{% macro f(x, n) %}{% if n %}{{ f(x ~ x, n - 1) }}{% endif %}{% endmacro %}{{ f('a', 40) }}",
    "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
    "{% set t = '\\n' * 900000 %}{{ t|indent(900000) }}",
])
def test_size_guard(template):
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="over the limit"):
        render_chat(template, MSGS)
    assert time.perf_counter() - t0 < 5


def test_time_guard_stops_silent_loops():
    template = "{% set x = range(100000)|list %}{% for i in x %}{% for j in x %}{% endfor %}{% endfor %}"
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="longer than 0.3 s"):
        render_chat(template, MSGS, timeout_s=0.3)
    assert time.perf_counter() - t0 < 5


def test_long_messages_are_not_refused():
    """The size budget counts the messages on top of max_chars."""
    big = [{"role": "user", "content": "word " * 300_000}]
    assert len(render_chat(CHATML, big)) > 1_500_000


def test_broken_templates_and_state_restored():
    before = sys.gettrace()
    for template, cls in [("{% for %}", FormatError), ("{{ foo() }}", FormatError),
                          ("{% include 'x' %}", FormatError),
                          ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", FormatError)]:
        with pytest.raises(cls) as e:
            render_chat(template, MSGS)
        assert isinstance(e.value, EdgeslimError) and "\n" not in str(e.value)
    assert sys.gettrace() is before
    assert render_chat(CHATML, MSGS).startswith("<|im_start|>system")
