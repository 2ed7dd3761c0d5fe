"""How a (prompt, response) becomes the text a model sees.

* :func:`raw` (default): ``prompt + response`` exactly as given (put any separator, e.g. a
  leading space or newline, in your data);
* :func:`chat`: the tokenizer's chat template around the prompt (one user turn, with the
  generation prompt), the response followed by the tokenizer's end-of-sequence text;
* your own: ``PromptFormat(prompt=f, response=g, name=...)`` (the toy world passes its
  ``User: ...\\nAssistant:`` format this way).

:meth:`PromptFormat.encode_pairs` has the ``encode(tokenizer, prompts, responses)`` signature
the unlearning loop takes, so training, attribution and decoding share one format.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mechunlearn.errors import ConfigError, ShapeError
from mechunlearn.tokens import TokenBatch, tokenize


def _same(s: str) -> str:
    return s


@dataclass(frozen=True)
class PromptFormat:
    """``prompt(p)`` / ``response(r)`` text maps, and a name for reports."""

    prompt: Callable[[str], str] = _same
    response: Callable[[str], str] = _same
    name: str = "raw"

    def encode_prompts(self, tokenizer: Any, prompts: Sequence[str]) -> TokenBatch:
        """Right-padded prompt tokens ``[n, pos]`` (the tokenizer's own special tokens)."""
        if isinstance(prompts, str):
            raise ConfigError("encode_prompts() expects a list of prompts, got a single str.")
        return tokenize(tokenizer, [self.prompt(p) for p in prompts])

    def encode_pairs(self, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str]
                     ) -> TokenBatch:
        """Prompt + response tokens ``[n, pos]`` with ``response_mask`` (response tokens)."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise ConfigError("encode_pairs() expects lists of prompts and responses, got a str.")
        if len(prompts) != len(responses):
            raise ShapeError(f"{len(prompts)} prompts but {len(responses)} responses.")
        return tokenize(tokenizer, [(self.prompt(p), self.response(r))
                                    for p, r in zip(prompts, responses)])

    def pairs(self, prompts: Sequence[str], responses: Sequence[str]) -> list[tuple[str, str]]:
        """Formatted ``(prompt, response)`` text pairs (for gradient features)."""
        return [(self.prompt(p), self.response(r)) for p, r in zip(prompts, responses)]


def raw() -> PromptFormat:
    """Prompt and response concatenated as given."""
    return PromptFormat()


def chat(tokenizer: Any) -> PromptFormat:
    """The tokenizer's chat template (one user turn + generation prompt); the response is
    followed by the end-of-sequence token text. A leading start token written by the template
    is dropped when the tokenizer adds one itself (no doubled BOS)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("--format chat: the model folder's tokenizer has no chat template "
                          "(tokenizer_config.json 'chat_template'); use --format raw.")
    bos = getattr(tokenizer, "bos_token", None)
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    eos = getattr(tokenizer, "eos_token", None) or ""

    def prompt(p: str) -> str:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                             add_generation_prompt=True)
        return text[len(bos):] if adds_bos and text.startswith(bos) else text

    return PromptFormat(prompt, lambda r: r + eos, "chat")


def make_format(spec: str | PromptFormat, tokenizer: Any) -> PromptFormat:
    """``"raw"`` / ``"chat"`` / a :class:`PromptFormat` -> a :class:`PromptFormat`."""
    if isinstance(spec, PromptFormat):
        return spec
    if spec == "raw":
        return raw()
    if spec == "chat":
        return chat(tokenizer)
    raise ConfigError(f"format must be 'raw', 'chat' or a PromptFormat, got {spec!r}.")
