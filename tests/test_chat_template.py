"""Chat templates in jinja2's sandbox, rendered as transformers renders them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gemma_mtp_mlx.chat_template import ChatTemplateError, render
from gemma_mtp_mlx.convert.gguf import GEMMA3_CHAT_TEMPLATE

FIXTURES = Path(__file__).parent / "fixtures"
SPECIAL = {"bos_token": "<bos>", "eos_token": "<eos>"}


def test_gemma3_template_folds_the_system_prompt_into_the_first_turn():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Next"},
    ]
    assert render(GEMMA3_CHAT_TEMPLATE, messages, True, SPECIAL) == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nNext<end_of_turn>\n<start_of_turn>model\n"
    )
    alone = render(GEMMA3_CHAT_TEMPLATE, [{"role": "user", "content": "Hi"}], False, SPECIAL)
    assert alone == "<bos><start_of_turn>user\nHi<end_of_turn>\n"


def test_gemma3_template_refuses_roles_that_do_not_alternate():
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ChatTemplateError, match="must alternate"):
        render(GEMMA3_CHAT_TEMPLATE, messages, True, SPECIAL)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}",  # immutable: no mutating the caller's list
        "{{ cycler.__init__.__globals__ }}",
    ],
)
def test_templates_run_in_the_immutable_sandbox(template):
    with pytest.raises(ChatTemplateError):
        render(template, [{"role": "user", "content": "hi"}], True, SPECIAL)


def test_what_transformers_gives_templates():
    template = (
        "{% for m in messages %}{% if loop.index0 > 1 %}{% break %}{% endif %}"
        "{% generation %}[{{ m['content'] | tojson }}]{% endgeneration %}\n"
        "{% endfor %}{{ eos_token }}{{ strftime_now('%Y')[:2] }}{{ extra }}"
    )
    messages = [{"role": "user", "content": c} for c in ("héllo", "日本", "never")]
    out = render(template, messages, False, SPECIAL, extra="!")
    assert out.startswith('["héllo"]["日本"]<eos>')  # trim_blocks, non-ASCII kept
    assert "never" not in out and out.endswith("!") and out[-3:-1].isdigit()


TEMPLATES = {
    "gemma3": GEMMA3_CHAT_TEMPLATE,
    "fixture": (FIXTURES / "e2b_tiny" / "target" / "chat_template.jinja").read_text(),
    "blocks": "{%- for m in messages %}\n  {{ m.role | upper }}: {{ m.content | tojson }}\n"
              "{%- endfor %}\n{% if add_generation_prompt %}  MODEL:{% endif %}",
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_renders_exactly_as_transformers(name, generation_prompt):
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello 👋"}, {"role": "user", "content": "x"}]
    (want,), _ = render_jinja_template([messages], chat_template=TEMPLATES[name],
                                       add_generation_prompt=generation_prompt, **SPECIAL)
    assert render(TEMPLATES[name], messages, generation_prompt, SPECIAL) == want


def test_a_template_that_does_not_compile_is_one_clear_error():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render("{% for %}", [], True, SPECIAL)
