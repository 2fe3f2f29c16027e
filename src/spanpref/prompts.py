"""Prompt files under recipes/prompts/: plain text with `### system` / `### user` sections and `{{name}}` slots.

Prompts are data, not Python strings, so they can be read, diffed and swapped per run. A prompt's `version`
(file name + content hash) is stored on the rows it produced.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from spanpref.errors import UsageError

_SECTION = re.compile(r"^### (system|user|assistant)\s*$", re.M)
_SLOT = re.compile(r"\{\{(\w+)\}\}")


class PromptError(UsageError):
    pass


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    sections: tuple[tuple[str, str], ...]  # (role, text)
    digest: str

    @property
    def version(self) -> str:
        return f"{self.name}@{self.digest}"

    @property
    def slots(self) -> set[str]:
        return {m for _, text in self.sections for m in _SLOT.findall(text)}

    def messages(self, **values: object) -> list[dict[str, str]]:
        """Chat messages with every `{{slot}}` filled; a missing or unused value is an error."""
        missing, unused = self.slots - set(values), set(values) - self.slots
        if missing or unused:
            raise PromptError(f"prompt {self.name}: missing values {sorted(missing)}, unused values {sorted(unused)}")
        # one pass per section, so text inserted into a slot is never scanned for slots again
        return [
            {"role": role, "content": _SLOT.sub(lambda m: str(values[m.group(1)]), text)}
            for role, text in self.sections
        ]


def truncate_text(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters on a word boundary, marked with " […]" when cut."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " […]"


def parse_prompt(text: str, name: str) -> PromptTemplate:
    parts = _SECTION.split(text)
    if parts[0].strip():
        raise PromptError(f"prompt {name}: text before the first '### system' or '### user' line")
    sections = tuple((role, body.strip("\n")) for role, body in zip(parts[1::2], parts[2::2], strict=True))
    if not sections or sections[-1][0] != "user":
        raise PromptError(f"prompt {name}: needs sections '### system' (optional) and '### user' (last)")
    return PromptTemplate(name, sections, hashlib.sha256(text.encode()).hexdigest()[:8])


def load_prompt(name_or_path: str | Path) -> PromptTemplate:
    """A bundled prompt by name (`recipes/prompts/<name>.txt`) or any prompt file."""
    path = Path(name_or_path)
    if path.suffix == ".txt" or path.exists():
        if not path.is_file():
            raise PromptError(f"prompt file {path} does not exist")
        return parse_prompt(path.read_text(encoding="utf-8"), path.stem)
    folder = resources.files("spanpref") / "recipes" / "prompts"
    target = folder / f"{name_or_path}.txt"
    if not target.is_file():
        names = sorted(p.name.removesuffix(".txt") for p in folder.iterdir() if p.name.endswith(".txt"))
        raise PromptError(f"unknown prompt {str(name_or_path)!r}; give a .txt file or one of {names}")
    return parse_prompt(target.read_text(encoding="utf-8"), str(name_or_path))
