"""A model folder's tokenizer: `tokenizer.json` through the `tokenizers` library directly.

mlx-lm's `load_tokenizer` goes through transformers: on the 2-core test machine it took 9.5 s
for Gemma's 262k-token vocabulary (the import of transformers, then three full copies of the
vocabulary), of which `tokenizers` itself reading the file is 2.5 s. `Tokenizer` offers what
the engine, chat, server and bench use of mlx-lm's wrapper: `encode`, `decode`,
`apply_chat_template`, `chat_template`, `detokenizer`, `get_added_vocab` and the special
token ids. Chat templates render in jinja2's sandbox (chat_template.py); a BPE vocabulary
is read through a cache (tokenizer_cache.py).

A folder with only a SentencePiece `tokenizer.model` still loads through mlx-lm (slowly).
"""

from __future__ import annotations

import json
from pathlib import Path

REPLACEMENT = "\ufffd"  # what a byte-fallback token decodes to before its character is complete
# A character is at most 4 bytes, so at most 4 tokens; a text still incomplete after more
# tokens than that is not UTF-8 at all (a random or broken model): it is released then, all
# but the last 3 tokens, which may begin a real character. Waiting longer would decode an
# ever longer window, once per token.
MAX_PENDING = 8
CHARACTER_TAIL = 3
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
# transformers' clean_up_tokenization, for configs that ask for it
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
            (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def read_chat_template(folder: Path, config: dict) -> str | None:
    """chat_template.jinja (what transformers writes since 4.43), else tokenizer_config.json's
    (a string, or named templates of which "default" is used), else chat_template.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None and (folder / "chat_template.json").is_file():
        template = json.loads((folder / "chat_template.json").read_text()).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template.strip() else None


class StreamingDetokenizer:
    """The text of a growing list of tokens, released in pieces that never split a character.

    Each new token is decoded together with the tokens not yet released and one released
    token before them (decoders may treat a sequence's first token specially); the new text
    is released once it no longer ends in U+FFFD, i.e. once a multi-byte character's last
    byte-fallback token has arrived. The pieces join to `decode(tokens)` (for text that is
    not UTF-8, up to how many U+FFFD stand for its invalid bytes: see MAX_PENDING).
    """

    def __init__(self, decode):
        self._decode = decode
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self.text = ""  # all released text
        self._context = 0  # tokens[_context:] are decoded together
        self._released = 0  # tokens[:_released] are in `text`
        self._segment = ""

    def add_token(self, token: int) -> None:
        self.tokens.append(token)
        self._release(final=False)

    def finalize(self) -> None:
        self._release(final=True)

    def _release(self, final: bool) -> None:
        end = len(self.tokens)
        if self._released == end:
            return
        before = self._decode(self.tokens[self._context : self._released])
        after = self._decode(self.tokens[self._context : end])
        complete = len(after) > len(before) and not after.endswith(REPLACEMENT)
        if not (final or complete):
            if end - self._released < MAX_PENDING:
                return
            end -= CHARACTER_TAIL
            after = self._decode(self.tokens[self._context : end])
        new = after[len(before) :]
        self.text += new
        self._segment += new
        self._context, self._released = self._released, end

    @property
    def last_segment(self) -> str:
        """The text released since the last time this was read."""
        segment, self._segment = self._segment, ""
        return segment


class Tokenizer:
    """`tokenizer.json` + `tokenizer_config.json` + the chat template of one model folder."""

    def __init__(self, backend, config: dict, chat_template: str | None):
        self.backend = backend  # tokenizers.Tokenizer
        self.config = config
        self.chat_template = chat_template
        self.special_tokens = {
            k: t for k in SPECIAL_TOKEN_KEYS if (t := _token_text(config.get(k))) is not None
        }
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.bos_token_id = self._id(self.bos_token)
        self.eos_token_id = self._id(self.eos_token)
        self.eos_token_ids = {self.eos_token_id} - {None}
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        self.detokenizer = StreamingDetokenizer(self.decode)

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizer:
        from .tokenizer_cache import load_backend

        folder = Path(folder)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        backend = load_backend(folder / "tokenizer.json")
        return cls(backend, config, read_chat_template(folder, config))

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False,
               clean_up_tokenization_spaces: bool | None = None) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_spaces if clean_up_tokenization_spaces is None else (
            clean_up_tokenization_spaces
        )
        if clean:
            for old, new in _CLEANUP:
                text = text.replace(old, new)
        return text

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in self.backend.get_added_tokens_decoder().items()}

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            tokenize: bool = True, **kwargs):
        """The conversation through the model's template: its text, or (`tokenize`) its ids,
        encoded without adding special tokens again (the template writes them)."""
        from .chat_template import render

        if self.chat_template is None:
            raise ValueError("this model has no chat template")
        text = render(self.chat_template, messages, add_generation_prompt,
                      self.special_tokens, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


def load_tokenizer(folder: str | Path):
    """Our Tokenizer where there is a tokenizer.json, else mlx-lm's (SentencePiece model)."""
    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder)
    from mlx_lm.utils import load_tokenizer as mlx_lm_load_tokenizer

    return mlx_lm_load_tokenizer(folder)
