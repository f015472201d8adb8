"""Prompt token ids from a template, a chat template if any, and one field cut by tokens."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Private-use markers where a value goes while the template and chat template are rendered.
SLOT = "\uE000DART{}\uE000"
SLOT_PATTERN = re.compile("\uE000DART(\\w+)\uE000")


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


def plain_ids(tokenizer, text: str) -> list[int]:
    """Token ids of data (a document, a question, a choice, a reference) as plain text: a
    special-token string in it, such as '<|im_end|>', is characters, never the special token."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"])


class PromptBuilder:
    """prefix + field tokens (cut to fit a token limit) + suffix, so truncation is exact in tokens."""

    def __init__(self, tokenizer, template: str, use_chat_template: bool, system_prompt: str | None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        self.special_strings = sorted({t.content for t in added if t.special} |
                                      set(getattr(tokenizer, "all_special_tokens", [])))

    def _wrap(self, text: str) -> str:
        if not self.chat:
            return text
        messages = [{"role": "user", "content": text}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, text: str) -> list[int]:
        """Template text: the chat template's own special tokens are parsed as such."""
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def _encode_value(self, text: str) -> list[int]:
        return plain_ids(self.tokenizer, text)

    def _bos(self) -> list[int]:
        """Plain prompts start with BOS where the tokenizer adds one; chat templates write their own."""
        if self.chat:
            return []
        ids = list(self.tokenizer("a")["input_ids"])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return [bos] if bos is not None and ids and ids[0] == bos else []

    def _apart(self, value: str) -> bool:
        """Whether a value must be tokenized on its own: it holds a special-token string (or a slot
        marker). Other values are tokenized inside the template text, as they always were."""
        return "\uE000" in value or any(token in value for token in self.special_strings)

    def _parts(self, values: dict[str, str], field: str | None) -> tuple[list[int], list[int], list[int]]:
        """(head, field ids, tail): the rendered prompt's tokens before, of and after values[field]."""
        apart = {name for name, value in values.items() if name == field or self._apart(value)}
        filled = {name: SLOT.format(name) if name in apart else value for name, value in values.items()}
        pieces = SLOT_PATTERN.split(self._wrap(render(self.template, filled)))
        head, field_ids, tail = self._bos(), [], []
        current = head
        for k, piece in enumerate(pieces):     # literal text, slot name, literal text, ...
            if k % 2 == 0:
                current.extend(self._encode(piece))
            elif piece == field:
                field_ids, current = self._encode_value(values[field]), tail
            else:
                current.extend(self._encode_value(values[piece]))
        return head, field_ids, tail

    def build(self, values: dict[str, str], field: str, max_field_tokens: int, token_limit: int,
              side: str = "right") -> Prompt:
        """Render with values[field] cut to min(max_field_tokens, what fits in token_limit) tokens."""
        head, field_ids, tail = self._parts(values, field)
        room = min(max_field_tokens, token_limit - len(head) - len(tail))
        if room < 1:
            raise RowError(f"prompt template alone takes {len(head) + len(tail)} tokens; "
                           f"the prompt may have {token_limit} (the context less max_new_tokens)")
        kept = field_ids[:room] if side == "right" else field_ids[-room:]
        return Prompt(head + kept + tail, len(field_ids), len(kept) < len(field_ids))

    def build_plain(self, values: dict[str, str]) -> list[int]:
        return self._parts(values, None)[0]


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
