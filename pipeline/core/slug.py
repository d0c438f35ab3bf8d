"""Concept names: lowercase slugs, so a name can never be a path trick or a shell word."""

from __future__ import annotations

import re

from pipeline.core.errors import E2GANError

SLUG = re.compile(r"[a-z][a-z0-9_]{0,39}")
RULE = "a-z, 0-9, '_', starting with a letter, at most 40 characters"


def is_slug(name: object) -> bool:
    """Whether `name` is a whole slug (fullmatch: no trailing newline slips through)."""
    return isinstance(name, str) and SLUG.fullmatch(name) is not None


def suggest_slug(name: object) -> str:
    """A slug close to `name`, for error messages."""
    fix = re.sub(r"[^a-z0-9_]+", "_", str(name).lower()).strip("_") or "my_concept"
    return ("c_" + fix if not fix[0].isalpha() else fix)[:40]


def check_slug(name: object, what: str = "concept") -> str:
    """`name` if it is a slug, else an E2GANError naming the rule and a fix."""
    if not is_slug(name):
        raise E2GANError(
            f"{what} name {name!r} is not a lowercase slug ({RULE}); rename it, e.g. '{suggest_slug(name)}'"
        )
    return str(name)
