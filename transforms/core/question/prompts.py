"""Prompts built from a row's columns (no Beam import).

A ``PromptTemplate`` is ``str.format`` syntax restricted to plain column names:
``"Describe this product: {title} ({brand})"``. Attribute and index access, positional fields,
conversions and format specs are refused when the template is made, so a template can only read
the row's columns, and a bad one fails before the job starts. Literal braces are written ``{{``
and ``}}``. ``render`` fills it from one row and raises ``PromptError`` (error type
``bad_prompt``) for a value that cannot go into a prompt: a null, bytes that are not UTF-8, a NUL
character, or a result over ``max_chars``.

Try it::

    python -c "from transforms.core.question.prompts import PromptTemplate as T; \\
        print(T('Describe {title} ({brand})').render({'title': 'Mug', 'brand': 'Acme'}))"
"""

from __future__ import annotations

import dataclasses
import json
import string
from collections.abc import Mapping
from typing import Any

DEFAULT_MAX_CHARS = 20000

_ALLOWED = (
    "only plain column names are allowed, like {title} ({title.x}, {title[0]}, {}, {0}, "
    "{title!r} and {title:>10} are not); write literal braces as {{ and }}"
)


class PromptError(ValueError):
    """A row whose values cannot make a prompt; ``error_type`` goes to the failures row."""

    def __init__(self, message: str, error_type: str = "bad_prompt"):
        super().__init__(message)
        self.message = message
        self.error_type = error_type

    def __reduce__(self):  # keep error_type through pickling (Beam moves exceptions around)
        return type(self), (self.message, self.error_type)


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A prompt with ``{column}`` placeholders filled from each row."""

    text: str
    max_chars: int = DEFAULT_MAX_CHARS
    # (literal text, column name or None), from string.Formatter().parse
    _parts: tuple[tuple[str, str | None], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise ValueError(f"prompt template must be text, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ValueError("prompt template is empty: give the prompt text")
        if "\x00" in self.text:
            raise ValueError("prompt template contains a NUL character (\\x00): remove it")
        if (
            isinstance(self.max_chars, bool)
            or not isinstance(self.max_chars, int)
            or self.max_chars < 1
        ):
            raise ValueError(f"max_chars must be a positive integer, got {self.max_chars!r}")
        where = f"prompt template {_excerpt(self.text)}"
        try:
            parsed = list(string.Formatter().parse(self.text))
        except ValueError as e:  # a lone "{" or "}"
            raise ValueError(f"{where}: {e}; {_ALLOWED}") from e
        parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in parsed:
            if name is None:
                parts.append((literal, None))
                continue
            if name == "" or name.isdigit():
                raise ValueError(f"{where} has a positional field {{{name}}}; {_ALLOWED}")
            if "." in name or "[" in name:
                raise ValueError(f"{where} has the field {{{name}}}; {_ALLOWED}")
            if conversion is not None or spec:
                raise ValueError(
                    f"{where} gives {{{name}}} a conversion or format spec; {_ALLOWED}"
                )
            if name != name.strip():
                raise ValueError(
                    f"{where} has the field {{{name}}} with spaces around the name: write "
                    f"{{{name.strip()}}}"
                )
            parts.append((literal, name))
        object.__setattr__(self, "_parts", tuple(parts))

    @property
    def columns(self) -> tuple[str, ...]:
        """The column names the template reads, in order of first use, each once."""
        return tuple(dict.fromkeys(name for _, name in self._parts if name is not None))

    def render(self, values: Mapping[str, Any]) -> str:
        """The prompt for one row. Raises ``PromptError`` for a value that cannot be used."""
        rendered: dict[str, str] = {}
        for name in self.columns:
            if name not in values:
                available = ", ".join(sorted(map(str, values))[:20])
                raise PromptError(
                    f"column {name!r} is not in the row (it has: {available}); the prompt "
                    "template names it"
                )
            rendered[name] = _text(name, values[name])
        out = "".join(literal + (rendered[name] if name else "") for literal, name in self._parts)
        if len(out) > self.max_chars:
            raise PromptError(
                f"prompt is {len(out)} characters, over the limit of {self.max_chars} "
                "(--max_prompt_chars)"
            )
        return out


def _text(name: str, value: Any) -> str:
    if value is None:
        raise PromptError(
            f"column {name!r} is null; the prompt template needs a value (fill it, or filter "
            "such rows out of the input)"
        )
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(
                f"column {name!r} is not UTF-8 text (bytes, {len(raw)} long, invalid at byte "
                f"{e.start}); give the prompt text as a UTF-8 string column"
            ) from None
    elif isinstance(value, str):
        text = value
    elif isinstance(value, (int, float)):  # bool is an int
        text = str(value)
    else:
        # lists, dicts, structs: as JSON; default=str for dates, decimals and numpy scalars
        text = json.dumps(value, ensure_ascii=False, default=str)
    if "\x00" in text:
        raise PromptError(
            f"column {name!r} contains a NUL character (\\x00), which cannot go into a prompt"
        )
    return text


def from_column(name: str, max_chars: int = DEFAULT_MAX_CHARS) -> PromptTemplate:
    """A template whose whole prompt is the value of column ``name``."""
    if not isinstance(name, str) or not name or any(c in name for c in "{}.[]!:"):
        raise ValueError(
            f"prompt column name {name!r} cannot be used: it must be non-empty and contain "
            "none of { } . [ ] ! :"
        )
    return PromptTemplate("{" + name + "}", max_chars=max_chars)
