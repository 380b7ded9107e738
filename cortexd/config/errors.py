"""Located configuration errors: every problem names file:line:column, the API and the key path."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    file: str             # the path as given to the loader
    line: int             # 1-based; 0 when the problem is the file as a whole (cannot be read)
    column: int           # 1-based; 0 with line 0
    api: str | None       # the API's name when the problem is inside a named API
    key_path: str         # dotted path inside the resource, e.g. "compute.max_replicas" ("" for the file)
    message: str          # what is wrong and what is accepted

    def __str__(self) -> str:
        where = os.path.basename(self.file) or self.file
        if self.line > 0:
            where = f"{where}:{self.line}:{self.column}"
        parts = [where]
        if self.api is not None:
            parts.append(f'api "{self.api}"')
        if self.key_path:
            parts.append(self.key_path)
        parts.append(self.message)
        return ": ".join(parts)


def sort_issues(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """In file order; stable, so issues found at the same place keep the order they were found in."""
    return sorted(issues, key=lambda issue: (issue.line, issue.column))


class ConfigError(Exception):
    """cortex.yaml is invalid; `errors` holds every problem found, sorted by line."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = sort_issues(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))
