"""The Daytona API as the Daytona backend uses it: credentials (never in messages), one client
per credentials, cached git bundles of base commits, and the removal of sandboxes that runs left
(found by their `rlm-run` label)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from . import workspace
from .base import SandboxError

__all__ = [
    "AGENT_LABEL",
    "RUN_LABEL",
    "bundle_of",
    "check_credentials",
    "cleanup_daytona",
    "credentials",
    "daytona_client",
    "is_url",
    "scrub",
]

log = logging.getLogger(__name__)

RUN_LABEL = "rlm-run"
AGENT_LABEL = "rlm-agent"

_clients: dict[tuple[str, str, str], Any] = {}
_clients_lock = threading.Lock()
_bundles: dict[tuple[str, str], bytes] = {}
_bundles_lock = threading.Lock()


def credentials() -> tuple[str, str, str]:
    """(api key, api url, target) from the environment, then `.env`; a clear error without a key."""
    from ..config import load_dotenv_file

    with contextlib.suppress(Exception):
        load_dotenv_file()
    key = os.environ.get("DAYTONA_API_KEY", "").strip()
    url = os.environ.get("DAYTONA_API_URL", "").strip() or "https://app.daytona.io/api"
    target = os.environ.get("DAYTONA_TARGET", "").strip()
    if not key:
        raise SandboxError(
            "the daytona sandbox backend needs DAYTONA_API_KEY (in the environment or in .env; "
            "create a key at https://app.daytona.io/dashboard/keys); DAYTONA_API_URL and "
            "DAYTONA_TARGET are optional"
        )
    return key, url, target


def scrub(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def daytona_client() -> Any:
    """A shared `daytona.Daytona` client for the current credentials."""
    key, url, target = credentials()
    with _clients_lock:
        client = _clients.get((key, url, target))
        if client is None:
            from daytona import Daytona, DaytonaConfig

            try:
                client = Daytona(DaytonaConfig(api_key=key, api_url=url, target=target or None))
            except Exception as exc:
                raise SandboxError(
                    f"cannot connect to Daytona at {url}: {scrub(str(exc), key)}"
                ) from None
            _clients[(key, url, target)] = client
    return client


def check_credentials() -> None:
    """One cheap authenticated call, so a wrong key fails before anything is created."""
    from daytona import ListSandboxesQuery

    key, url, _ = credentials()
    client = daytona_client()
    try:
        for _sb in client.list(ListSandboxesQuery(labels={RUN_LABEL: "-"}, limit=1)):
            break
    except Exception as exc:
        text = scrub(str(exc), key)
        if "401" in text or "403" in text or "nauthori" in text or "credential" in text.lower():
            raise SandboxError(
                f"Daytona rejected the API key (DAYTONA_API_KEY) at {url}: {text}"
            ) from None
        raise SandboxError(f"cannot reach Daytona at {url}: {text}") from None


def bundle_of(target: workspace.Target) -> bytes:
    """A `git bundle` of the target's base commit (and its history), cached."""
    assert target.git_dir is not None and target.commit is not None
    key = (target.git_dir, target.commit)
    with _bundles_lock:
        data = _bundles.get(key)
        if data is not None:
            return data
        with tempfile.TemporaryDirectory(prefix="rlm-bundle-") as tmp:
            out = os.path.join(tmp, "base.bundle")
            workspace.bundle(target, out)
            data = Path(out).read_bytes()
        if len(_bundles) >= 4:
            _bundles.clear()
        _bundles[key] = data
        return data


def is_url(text: str | None) -> bool:
    return bool(text) and ("://" in str(text) or str(text).startswith("git@"))


def cleanup_daytona(run_id: str | None = None) -> list[str]:
    """Delete Daytona sandboxes left by rlm runs (all, or one run's), found by the `rlm-run` label."""
    from . import require_sdk

    require_sdk("daytona")
    from daytona import ListSandboxesQuery

    check_credentials()
    client = daytona_client()
    found: list[Any] = []
    for sb in client.list(ListSandboxesQuery()):
        labels = dict(getattr(sb, "labels", None) or {})
        if RUN_LABEL in labels and (run_id is None or labels[RUN_LABEL] == run_id):
            found.append(sb)
    removed: list[str] = []
    for sb in found:
        try:
            sb.delete(timeout=60)
            removed.append(
                f"{sb.id} ({sb.labels.get(RUN_LABEL)}/{sb.labels.get(AGENT_LABEL, '?')})"
            )
        except Exception as exc:
            log.warning("could not delete Daytona sandbox %s: %s", sb.id, exc)
    return removed
