"""Chat-template rendering with jinja2, the way transformers renders `tokenizer.chat_template`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, NoReturn

from jinja2 import Template
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships no template (plain base models): ChatML, which SmolLM2 and Qwen use.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The messages are malformed, or the template rejected them (its `raise_exception`)."""


def _raise(message: str) -> NoReturn:
    raise ChatTemplateError(message)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes and sorts keys; templates expect plain json.dumps.
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str) -> Template:
    # Sandboxed: templates come from model files, which are data, not trusted code.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def parse_messages(raw: str) -> list[dict[str, Any]]:
    """A JSON list of {"role", "content"} objects (extra keys such as tool calls are passed through)."""
    try:
        messages = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ChatTemplateError(f"chat prompt is not valid JSON: {exc}") from None
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages
    ):
        raise ChatTemplateError('chat prompt must be a JSON list of {"role": ..., "content": ...} objects')
    return messages


def render_chat(template: str | None, messages: Sequence[Mapping[str, Any]], bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True,
                tools: Sequence[Mapping[str, Any]] | None = None) -> str:
    """`tools` (OpenAI tool objects) reach the template as its `tools` variable, as transformers passes them."""
    extra = {"tools": list(tools)} if tools else {}
    try:
        return _compile(template or CHATML_TEMPLATE).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=bos_token, eos_token=eos_token, **extra,
        )
    except ChatTemplateError:
        raise
    except Exception as exc:  # jinja2 TemplateError, sandbox SecurityError, errors inside the template
        raise ChatTemplateError(f"chat template failed: {exc}") from exc
