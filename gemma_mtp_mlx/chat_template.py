"""Chat templates rendered as transformers renders them, without importing transformers.

Templates come with downloaded models, so they are untrusted code: they run only in jinja2's
immutable sandbox (never a plain `jinja2.Environment`), with what transformers gives them:
`trim_blocks`/`lstrip_blocks`, loop controls, `{% generation %}` blocks, a `tojson` that keeps
non-ASCII text, `raise_exception`, `strftime_now`, and the tokenizer's special tokens.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache


class ChatTemplateError(ValueError):
    """The template refused the conversation (e.g. roles that do not alternate)."""


def _raise(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@cache
def _environment():
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (marks the assistant's text for training
        masks in transformers): here its body is rendered as is."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(
                lineno
            )

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = _strftime_now
    return env


@cache
def compile_template(source: str):
    """The compiled template (cached: a model's template is compiled once per process)."""
    from jinja2.exceptions import TemplateError

    try:
        return _environment().from_string(source)
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template does not compile: {e}") from None


def render(source: str, messages: list[dict], add_generation_prompt: bool,
           special_tokens: dict[str, str], **kwargs) -> str:
    """The conversation as text, exactly as the model expects it."""
    from jinja2.exceptions import TemplateError

    template = compile_template(source)
    context = {**special_tokens, **kwargs}
    try:
        return template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                               **context)
    except TemplateError as e:  # raise_exception, or the sandbox refusing an operation
        raise ChatTemplateError(str(e) or type(e).__name__) from None
