"""Prompt token ids from a template, a chat template if any, and one field cut by tokens."""
from __future__ import annotations

from dataclasses import dataclass

_SLOT = "\uE000DARTSLOT\uE000"   # private-use marker where the truncated field goes


class RowError(ValueError):
    """A row the task cannot run (bad or missing field): it becomes an error row."""


@dataclass
class Prompt:
    ids: list[int]
    field_tokens: int      # tokens of the truncatable field before truncation
    truncated: bool


def render(template: str, values: dict[str, str]) -> str:
    """Plain `{name}` substitution of validated templates; values are never parsed."""
    return template.format_map(values)


class PromptBuilder:
    """prefix + field tokens (cut to fit a token limit) + suffix, so truncation is exact in tokens."""

    def __init__(self, tokenizer, template: str, use_chat_template: bool, system_prompt: str | None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt

    def _wrap(self, text: str) -> str:
        if not self.chat:
            return text
        messages = [{"role": "user", "content": text}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _bos(self) -> list[int]:
        """Plain prompts start with BOS where the tokenizer adds one; chat templates write their own."""
        if self.chat:
            return []
        ids = list(self.tokenizer("a")["input_ids"])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if bos is not None and ids and ids[0] == bos else []

    def build(self, values: dict[str, str], field: str, max_field_tokens: int, token_limit: int,
              side: str = "right") -> Prompt:
        """Render with values[field] cut to min(max_field_tokens, what fits in token_limit) tokens."""
        text = self._wrap(render(self.template, {**values, field: _SLOT}))
        prefix, _, suffix = text.partition(_SLOT)
        head, tail = self._bos() + self._encode(prefix), self._encode(suffix)
        field_ids = self._encode(values[field])
        room = min(max_field_tokens, token_limit - len(head) - len(tail))
        if room < 1:
            raise RowError(f"prompt template alone takes {len(head) + len(tail)} tokens; "
                           f"the prompt may have {token_limit} (the context less max_new_tokens)")
        kept = field_ids[:room] if side == "right" else field_ids[-room:]
        return Prompt(head + kept + tail, len(field_ids), len(kept) < len(field_ids))

    def build_plain(self, values: dict[str, str]) -> list[int]:
        return self._bos() + self._encode(self._wrap(render(self.template, values)))


def text_field(row: dict, column: str, what: str, max_chars: int) -> str:
    """A non-empty string no longer than max_chars, or a RowError naming the problem."""
    value = row.get(column)
    if value is None:
        raise RowError(f"{what} ({column}) is null")
    if not isinstance(value, str):
        raise RowError(f"{what} ({column}) is not a string but {type(value).__name__}")
    if not value.strip():
        raise RowError(f"{what} ({column}) is empty")
    if len(value) > max_chars:
        raise RowError(f"{what} ({column}) has {len(value)} characters, over input.max_text_chars={max_chars}")
    return value
