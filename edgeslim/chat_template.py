"""Chat templates (`tokenizer.chat_template`) rendered safely.

    text = render_chat(tok.chat_template, [{"role": "user", "content": "Hi"}])
    ids = tok.encode(text, add_bos=False, parse_special=True)

A chat template inside a downloaded GGUF file is untrusted code. It is rendered the
way Hugging Face renders it (`jinja2.sandbox.ImmutableSandboxedEnvironment` with
trim_blocks, lstrip_blocks and loop controls; `raise_exception`, `strftime_now`,
`namespace`, `dict`, a `tojson` that does not HTML-escape, a no-op
`{% generation %}` block), with guards on top:

* any unsafe attribute access (`__class__`, `__mro__`, ...) raises at once instead of
  rendering as an empty Undefined;
* size: the output, and every string or list the template builds (`+`, `*`, `~`,
  `%`, `str.format`, `replace`, `indent`, `join`, ...), is checked *before* it is built
  against `max_chars` (default 1 MB) plus the size of the messages themselves;
* time: a line tracer on the template's own code aborts rendering after
  `timeout_s` (default 2 s) of wall-clock time, which also stops loops that call
  nothing (while rendering, it stands in for any debugger/coverage tracer of the
  calling thread, which is restored afterwards).

Every failure is an `EdgeslimError` with a one-line message: `FormatError` for a
broken or hostile template, `InputError` when the template rejects the messages
(`raise_exception`) or a size or time limit trips.

Without a template in the file, `FALLBACK_TEMPLATE` is used: a plain transcript of
"System: ...", "User: ..." and "Assistant: ..." lines ending in "Assistant:", because
files without a template are mostly base models that know no chat control tokens
(stop generation at "\nUser:").

`bos_token` is what `{{ bos_token }}` renders to: pass it only when you then encode
with `add_bos=False`, or the prompt starts with two BOS tokens.
"""
from __future__ import annotations

import functools
import json
import re
import sys
import threading
import time
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

from .errors import EdgeslimError, FormatError, InputError

MAX_CHARS = 1_000_000
TIMEOUT_S = 2.0
_TEMPLATE_FILE = "<chat-template>"

FALLBACK_TEMPLATE = (
    "{% set names = {'system': 'System', 'user': 'User', 'assistant': 'Assistant'} %}"
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ names.get(m['role'], m['role']|string|title) }}: {{ m['content'] }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\nAssistant:' }}{% endif %}"
)


class _Limit(Exception):
    """Raised inside rendering when a guard trips (turned into an EdgeslimError)."""


def _est(x, depth: int = 0) -> int:
    """Rough size of a value in characters (strings and containers; early exit is fine)."""
    if isinstance(x, (str, bytes)):
        return len(x)
    if depth < 5 and isinstance(x, (list, tuple, set, frozenset)):
        return len(x) + sum(_est(v, depth + 1) for v in x)
    if depth < 5 and isinstance(x, dict):
        return len(x) + sum(_est(k, depth + 1) + _est(v, depth + 1) for k, v in x.items())
    if isinstance(x, int) and not isinstance(x, bool):
        return x.bit_length() // 3 + 1
    return 8


_FIELDS = {"{": re.compile(r"\{[^{}]*\}"), "%": re.compile(r"%[-+ #0*]*\d*(?:\.\d*)?")}
_NUMBER = re.compile(r"\d{1,12}")


def _format_est(fmt: str, args, marker: str) -> int:
    """Upper bound on the size of `fmt % args` (marker "%") or `fmt.format(*args)` ("{")."""
    fields = _FIELDS[marker].findall(fmt)
    widths = [int(n) for f in fields for n in _NUMBER.findall(f)]
    ints = [abs(a) for a in (args if isinstance(args, (list, tuple)) else [args]) if isinstance(a, int)]
    widest = max(widths + ints + [_est(args)])
    return len(fmt) + len(fields) * widest


class _Guard:
    """Size budget and deadline of one render."""

    def __init__(self, limit: int, timeout_s: float):
        self.limit, self.deadline, self.lines = limit, time.monotonic() + timeout_s, 0
        self.timeout_s = timeout_s

    def size(self, n: int, what: str) -> None:
        if n > self.limit:
            raise _Limit(f"{what} would be {n} characters, over the limit of {self.limit}")

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise _Limit(f"rendering took longer than {self.timeout_s:g} s")

    def ints(self, values) -> None:
        for v in values:
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > self.limit:
                raise _Limit(f"number {v} is larger than the limit of {self.limit}")

    def tracer(self, frame, event, arg):
        """sys.settrace hook: trace lines of the template's own code only."""
        return self._line if frame.f_code.co_filename == _TEMPLATE_FILE else None

    def _line(self, frame, event, arg):
        self.lines += 1
        if not self.lines & 255:
            self.clock()
        return self._line

    def iterate(self, it):
        total = 0
        for v in it:
            total += _est(v)
            self.size(total, "a sequence")
            yield v


class _GuardedCodeGenerator(CodeGenerator):
    """Routes `~` string concatenation through the size guard."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        self.write("environment.guarded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _Generation(jinja2.ext.Extension):
    """HF's `{% generation %}...{% endgeneration %}` marks assistant text; here it renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _TemplateNamespace(Namespace):
    """jinja's namespace, refusing underscore names (as HF does) and oversized values."""

    def __init__(*args, **kwargs):  # same signature trick as jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _TemplateNamespace._check(name, value)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name, value)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name, value):
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"namespace attribute {name!r} starts with an underscore")
        _guard().size(_est(value), f"namespace value {name!r}")


_CURRENT = threading.local()  # .guard: the _Guard of this thread's render in progress


def _guard() -> _Guard:
    g = getattr(_CURRENT, "guard", None)
    if g is None:
        raise _Limit("template code ran outside render_chat")
    return g


def _str_method(obj):
    """(the string, method name) when `obj` is a bound str method (or jinja's format wrapper)."""
    target = getattr(obj, "__wrapped__", obj)
    owner = getattr(target, "__self__", None)
    return (owner, getattr(target, "__name__", "")) if isinstance(owner, str) else None


def _str_call_est(s: str, name: str, args, kwargs) -> int | None:
    """Size bound of calling str method `name` on `s`, for the methods that can grow text."""
    if name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        n = (len(s) + 1) if args[0] == "" else s.count(args[0])
        return len(s) + n * len(args[1])
    if name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        return len(s) + s.count("\t") * (size if isinstance(size, int) else 8)
    if name == "join" and args and isinstance(args[0], (list, tuple)):
        return _est(args[0]) + len(args[0]) * len(s)
    if name in ("format", "format_map"):
        return _format_est(s, list(args) + list(kwargs.values()), "{")
    return None


def _guard_filter(name: str, func):
    """Wrap a jinja filter: bound its inputs and growth before running it."""

    value_at = 1 if getattr(func, "jinja_pass_arg", None) else 0  # after context/eval_ctx

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        g = _guard()
        g.clock()
        g.ints(list(args[value_at + 1:]) + list(kwargs.values()))  # widths, counts: not the value
        args = [g.iterate(a) if hasattr(a, "__next__") and not isinstance(a, (str, list)) else a for a in args]
        strs = [a for a in args if isinstance(a, str)]
        s = strs[0] if strs else ""
        if name == "replace" and len(strs) >= 3:
            g.size(_str_call_est(strs[0], "replace", strs[1:3], {}), "replace() result")
        elif name == "indent":
            width = kwargs.get("width", args[1] if len(args) > 1 else 4)
            w = len(width) if isinstance(width, str) else int(width)
            g.size(len(s) + (s.count("\n") + 1) * w, "indent() result")
        elif name == "format" and strs:
            g.size(_format_est(s, args[1:], "%"), "format() result")
        elif name == "tojson":
            indent = kwargs.get("indent", args[2] if len(args) > 2 else None)
            if (len(indent) if isinstance(indent, str) else indent or 0) > 64:
                raise _Limit("tojson indent above 64")
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple, dict)):
            g.size(_est(result), f"{name}() result")
        return result

    return wrapper


class _ChatEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the guards of `_Guard` wired into every hook jinja offers."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def unsafe_undefined(self, obj, attribute):
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed")

    def getattr(self, obj, attribute):
        _guard().clock()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _guard().clock()
        return super().getitem(obj, argument)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's own signature)
        g = _guard()
        g.clock()
        g.ints(list(args) + list(kwargs.values()))
        meth = _str_method(__obj)
        if meth is not None:
            est = _str_call_est(meth[0], meth[1], args, kwargs)
            if est is not None:
                g.size(est, f"str.{meth[1]}() result")
        args = tuple(g.iterate(a) if hasattr(a, "__next__") and not isinstance(a, str) else a for a in args)
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple, dict)):
            g.size(_est(result), "a call result")
        return result

    def call_binop(self, context, operator, left, right):
        g = _guard()
        g.clock()
        seqs = (str, list, tuple)
        if operator == "*":
            if isinstance(left, seqs) and isinstance(right, int):
                g.size(_est(left) * max(right, 0), "a repeated sequence")
            elif isinstance(right, seqs) and isinstance(left, int):
                g.size(_est(right) * max(left, 0), "a repeated sequence")
            elif isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > 4096:
                raise _Limit("integer product too large")
        elif operator == "+" and (isinstance(left, seqs) or isinstance(right, seqs)):
            g.size(_est(left) + _est(right), "a concatenation")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * max(abs(left).bit_length(), 1) > 4096:
                raise _Limit("power too large")
        elif operator == "%" and isinstance(left, str):
            g.size(_format_est(left, right, "%"), "a %-formatted string")
        return super().call_binop(context, operator, left, right)

    def guarded_concat(self, parts) -> str:
        g = _guard()
        g.size(sum(_est(p) for p in parts), "a ~ concatenation")
        return "".join(p if isinstance(p, str) else str(p) for p in parts)


class _Rejected(jinja2.exceptions.TemplateError):
    """The template's own `raise_exception(...)`: it refuses these messages."""


def _raise_exception(message):
    raise _Rejected(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _template_dict(*args, **kwargs):
    return dict(*args, **kwargs)


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = _ChatEnvironment(trim_blocks=True, lstrip_blocks=True,
                           extensions=[jinja2.ext.loopcontrols, _Generation])
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.globals.pop("lipsum", None)
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       namespace=_TemplateNamespace, dict=_template_dict)
    code = env.compile(source, filename=_TEMPLATE_FILE)
    return env.template_class.from_code(env, code, env.make_globals(None))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def render_chat(template: str | None, messages: list[dict], add_generation_prompt: bool = True,
                bos_token: str = "", eos_token: str = "", *, max_chars: int = MAX_CHARS,
                timeout_s: float = TIMEOUT_S, **context) -> str:
    """Render `messages` ([{"role", "content"}, ...]) with a chat template (None: the fallback).

    Extra keyword arguments (e.g. `tools=...`, `enable_thinking=False`) become template
    variables, as in HF's apply_chat_template. Raises EdgeslimError subclasses only.
    """
    source = template if template else FALLBACK_TEMPLATE
    if len(source) > max_chars:
        raise FormatError(f"chat template of {len(source)} characters is over the limit of {max_chars}; "
                          "use a smaller template")
    limit = max_chars + _est(messages) + _est(context)
    guard = _Guard(limit, timeout_s)
    old_trace = sys.gettrace()
    _CURRENT.guard = guard
    try:
        tmpl = _compile(source)
        sys.settrace(guard.tracer)
        out, total = [], 0
        for chunk in tmpl.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                   bos_token=bos_token, eos_token=eos_token, **context):
            total += len(chunk)
            guard.size(total, "the rendered chat")
            out.append(chunk)
        return "".join(out)
    except _Limit as e:
        raise InputError(f"chat template stopped: {e}; shorten the messages or use another template") from None
    except jinja2.TemplateSyntaxError as e:
        raise FormatError(f"chat template does not parse (line {e.lineno}): {_one_line(e.message)}; "
                          "fix the template or pass another one") from None
    except SecurityError as e:
        raise FormatError(f"chat template refused by the sandbox: {_one_line(e)}; "
                          "the template is unsafe, pass another one") from None
    except _Rejected as e:
        raise InputError(f"chat template rejected the messages: {_one_line(e)}") from None
    except EdgeslimError:
        raise
    except Exception as e:  # undefined names, TypeError, RecursionError, ... from a broken template
        raise FormatError(f"chat template failed: {type(e).__name__}: {_one_line(e)}; "
                          "fix the template or pass another one") from None
    finally:
        sys.settrace(old_trace)
        _CURRENT.guard = None
