"""Process environment: no analytics from dvc, prefect or onnxruntime, offline model hubs unless the user says otherwise."""

from __future__ import annotations

import os

QUIET_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # onnxruntime >= 1.29 sends usage events (1DS, mobile.events.data.microsoft.com) from Linux too, a few
    # seconds after it is imported, unless this is set before it initialises
    "ORT_DISABLE_TELEMETRY": "1",
}


def set_quiet_env() -> None:
    """Set the no-analytics variables (without overriding what the user set explicitly)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
