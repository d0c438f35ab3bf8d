"""User-facing errors: one line that names the problem and the fix, and a non-zero exit."""

from __future__ import annotations

import functools
import logging
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])

EXIT_USER_ERROR = 2


class E2GANError(Exception):
    """An error the user can fix: bad params, a missing asset, bad input. Printed as one line."""


class ConfigError(E2GANError):
    """params.yaml is malformed or inconsistent."""


class AssetError(E2GANError):
    """An offline asset is missing, corrupt or cannot be fetched."""


def exit_on_user_error(fn: F) -> F:
    """Run `fn`; turn an E2GANError into `error: <message>` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except E2GANError as e:
            logging.getLogger("e2gan").debug("user error", exc_info=True)
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
