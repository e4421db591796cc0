"""Chat templates: the Jinja program in a tokenizer folder that turns a conversation into the model's text.

A chat template comes with the checkpoint, so it is untrusted input. It renders in Jinja's immutable sandbox
with the same extras as Transformers' `apply_chat_template` (`raise_exception`, `strftime_now`, a `tojson`
that keeps non-ASCII text, `{% generation %}` markers, `break`/`continue`), so a template renders the same
text here as there. Everything the template sees is rebuilt from plain JSON-like values first, and reaching
for an unsafe attribute (`__class__`, `_private`, `list.append`) is an error, not an empty string.

Any failure is a `ChatTemplateError` (a ValueError) of one line: the template's own message, which
conversation and message it failed on (0-based, as in the list passed in) and the template line.
"""

from __future__ import annotations

import dataclasses
import json
import re
import traceback
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache

import numpy as np

try:
    import jinja2
except ImportError:
    raise ImportError("chat templates need jinja2: pip install 'jinja2>=3.1.6'") from None
if tuple(map(int, re.findall(r"\d+", jinja2.__version__)[:3])) < (3, 1, 6):
    # Older versions have known sandbox escapes, and chat templates are untrusted input.
    raise ImportError(f"chat templates need jinja2 >= 3.1.6 (sandbox fixes), found {jinja2.__version__}: "
                      "pip install -U 'jinja2>=3.1.6'")
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InputError

# Appended to the message being continued, so its end can be found in the rendered text (as in Transformers).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
# Older names for a message's reasoning; templates read "reasoning_content", gpt-oss templates "thinking".
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
# Private-use characters that wrap control tokens found in user text (sanitize_control_tokens).
MARK_START, MARK_END = "\U000f0000", "\U000f0001"


class ChatTemplateError(InputError):
    """A chat template that is missing, is not valid Jinja, or fails on a conversation."""


# --------------------------------------------------------------------------------------------------
# The sandbox
# --------------------------------------------------------------------------------------------------

# The (rendered blocks, spans) of the render in progress that asked for generation spans, else None.
_spans_being_tracked: ContextVar = ContextVar("tuneforge_generation_spans", default=None)


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}`: the text inside is what the assistant wrote.

    It renders its body unchanged and, while a render tracks spans, records the body's character span.
    """

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_track"), [], [], body).set_lineno(lineno)

    def _track(self, caller):
        text = caller()
        tracking = _spans_being_tracked.get()
        if tracking is not None:
            blocks, spans = tracking
            start = sum(len(block) for block in blocks)  # everything the template has written so far
            spans.append((start, start + len(text)))
        return text


class _Sandbox(ImmutableSandboxedEnvironment):
    def unsafe_undefined(self, obj, attribute):
        # Jinja returns an Undefined that prints as ""; refuse outright instead.
        raise jinja2.exceptions.SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe"
        )


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, without handing them the dict type itself."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace()`, refusing underscore names (as Transformers does)."""

    def __init__(*args, **kwargs):  # noqa: N805 - Jinja's signature trick, so namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the underscore name {name!r}")


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Jinja's own tojson escapes <, >, & and ' for HTML; templates expect plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format):
    return datetime.now().strftime(format)


@lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_Namespace)
    return env


@lru_cache(maxsize=32)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template; a syntax error is a ChatTemplateError naming the line."""
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"the chat template is not valid Jinja (template line {error.lineno}): "
                                f"{error.message}") from None


@lru_cache(maxsize=32)
def template_literals(source: str) -> str:
    """The template's raw text and string constants, joined by NULs (where its control tokens are written)."""
    tree = _environment().parse(source)
    literals = {node.data for node in tree.find_all(nodes.TemplateData)}
    literals |= {node.value for node in tree.find_all(nodes.Const) if isinstance(node.value, str)}
    return "\0".join(literals)


# --------------------------------------------------------------------------------------------------
# What the template sees
# --------------------------------------------------------------------------------------------------


def _as_dicts(value):
    """Message objects (dataclasses, pydantic models such as OpenAI's) as dicts, recursively."""
    if isinstance(value, Mapping):
        return {key: _as_dicts(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_dicts(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_as_dicts(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _as_dicts(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _as_dicts(value.model_dump())
    return value


def normalize_conversation(conversation) -> list[dict]:
    """A conversation as a list of message dicts, dropping keys whose value is None (as Transformers does)."""
    messages = _as_dicts(getattr(conversation, "messages", conversation))
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"a conversation must be a list of message dicts, got {type(messages).__name__}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise TypeError(f"chat message {index} must be a dict with 'role' and 'content', got {message!r:.80}")
    return [{key: value for key, value in message.items() if value is not None} for message in messages]


def plain_data(value):
    """`value` rebuilt from JSON-like types; anything else becomes a placeholder such as "<Tensor>".

    Rich objects (tensors, images) have methods the sandbox does not know to be dangerous, and templates
    only test whether such values are present.
    """
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, numpy strings, ...) lose their extra methods; str() of an enum would give its name.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {plain_data(key): plain_data(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain_data(item) for item in value]
    if isinstance(value, tuple):
        return tuple(plain_data(item) for item in value)
    if isinstance(value, np.generic):
        return plain_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    return f"<{type(value).__name__}>"


def _with_reasoning_aliases(messages: list[dict]) -> list[dict]:
    out = []
    for message in messages:
        reasoning = next((message[key] for key in _REASONING_FIELDS if message.get(key) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def render(source: str, conversations: list[list[dict]], *, tools=None, documents=None, add_generation_prompt=False,
           continue_final_message=False, track_generation=False, variables=None):
    """Render each conversation; return (texts, spans), spans being each text's `{% generation %}` spans.

    `variables` are further template variables (the special tokens, the caller's keyword arguments).
    """
    template = compile_template(source)
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise TypeError(f"tools must be JSON schemas (dicts); got {type(tool).__name__} (Python functions "
                                "are not converted to schemas here)")
    if documents is not None and not all(isinstance(document, Mapping) for document in documents):
        raise TypeError("documents must be a list of dicts with 'title' and 'text' keys")
    context = plain_data({**(variables or {}), "tools": tools, "documents": documents,
                          "add_generation_prompt": add_generation_prompt})

    texts, all_spans = [], []
    for index, conversation in enumerate(conversations):
        messages = _with_reasoning_aliases(plain_data(conversation))
        continued = None
        if continue_final_message:
            continued = _tag_final_message(source, messages, continue_final_message)
        try:
            text, spans = _render_one(template, messages, context, track_generation)
        except Exception as error:
            where = [f"conversation {index}"] if len(conversations) > 1 else []
            raise ChatTemplateError(_describe(error, template, messages, context, where)) from None
        if continued is not None:
            text = _cut_at_tag(text, continued)
        texts.append(text)
        all_spans.append(spans)
    return texts, all_spans


def _render_one(template, messages, context, track_generation):
    if not track_generation:
        return template.render(messages=messages, **context), []
    blocks, spans = [], []
    token = _spans_being_tracked.set((blocks, spans))
    try:
        for block in template.generate(messages=messages, **context):
            blocks.append(block)
    finally:
        _spans_being_tracked.reset(token)
    return "".join(blocks), spans


def _describe(error, template, messages, context, where) -> str:
    """One line: where the template failed and its own message."""
    message = str(error) if isinstance(error, jinja2.TemplateError) else f"{type(error).__name__}: {error}"
    # The first message whose addition makes the template fail the same way is the one to blame.
    for count in range(1, len(messages)):
        try:
            _render_one(template, messages[:count], context, False)
        except Exception as prefix_error:
            if str(prefix_error) == str(error) and type(prefix_error) is type(error):
                where.append(f"message {count - 1}")
            break
    else:
        if messages:
            where.append(f"message {len(messages) - 1}")
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if frame.filename == "<template>"]
    if lines:
        where.append(f"template line {lines[-1]}")
    return f"chat template failed ({', '.join(where)}): {message}" if where else f"chat template failed: {message}"


def _tag_final_message(source, messages, field):
    """Append the continue tag to the final message's `field`; return the text being continued."""
    if not messages:
        raise InputError("continue_final_message is set but the conversation is empty")
    field = field if isinstance(field, str) else "content"
    final = messages[-1].get(field)
    if final is None:
        raise InputError(f"continue_final_message is set but the final message has no {field!r} to continue")
    fields = [field]
    if field in _REASONING_FIELDS:  # reasoning is copied under several names: tag each copy
        fields = [name for name in _REASONING_FIELDS if messages[-1].get(name) == final]
    if not any(name in source for name in fields):
        raise InputError(f"continue_final_message is set to {field!r} but the chat template never reads it")
    if isinstance(final, (list, tuple)):
        for block in reversed(final):
            if "text" in block:
                final = block["text"]
                block["text"] += _CONTINUE_TAG
                return final
        raise InputError("continue_final_message is set but the final message has no text block to continue")
    for name in fields:
        messages[-1][name] += _CONTINUE_TAG
    return final


def _cut_at_tag(text, continued):
    tag = _CONTINUE_TAG.strip()
    if continued.strip() not in text or tag not in text:
        raise InputError("continue_final_message is set but the chat template drops part of the final message, "
                         "so it cannot be continued")
    at = text.rindex(tag)
    # If the template kept the trailing space, cut exactly; otherwise it trimmed it, so trim the rest too.
    return text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()


# --------------------------------------------------------------------------------------------------
# Control tokens in user text (sanitize_control_tokens)
# --------------------------------------------------------------------------------------------------


def control_token_pattern(tokens) -> re.Pattern:
    """A regex matching any of `tokens`, longest first (so a token wins over the tokens inside it)."""
    longest_first = sorted(tokens, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")


def mark_control_tokens(value, pattern: re.Pattern):
    """Wrap each control token in user strings (recursively; dict keys are left alone) with the private marks."""
    if isinstance(value, str):
        value = value.replace(MARK_START, "").replace(MARK_END, "")  # a mark in the input cannot forge one
        return pattern.sub(f"{MARK_START}\\g<0>{MARK_END}", value)
    if isinstance(value, dict):
        return {key: mark_control_tokens(item, pattern) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [mark_control_tokens(item, pattern) for item in value]
    return value


def split_marked(text: str, tokens) -> list[str]:
    """[text, marked token, text, ...] with None for a lone mark (a template split a marked token apart)."""
    pattern = control_token_pattern(tokens).pattern
    return re.split(f"{MARK_START}({pattern}){MARK_END}|[{MARK_START}{MARK_END}]", text)
