"""``check_gated``: is a feature still behind its gate? Seed 004's order, with its hole fixed.

1. A generally available feature is never gated.
2. The hub is the source of truth: a gate it has decides (enabled: not gated).
3. Only when the hub cannot answer (unreachable, or an error) or has no such gate does the
   local config decide (the agent's local config target, or any JSON file of gates).
4. Otherwise the feature is gated.

The seed fell through to the local config whenever the hub's gate was *disabled*, so a
stale ``true`` on one node re-enabled a feature the fleet had turned off; here a gate the
hub has is final.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

import aiohttp
import orjson

from fleetsync.agent.localconfig import LocalConfig, LocalConfigError

log = logging.getLogger(__name__)


async def check_gated(
    key: str,
    *,
    hub: str | None = None,
    token: str = "",
    ssl_context: ssl.SSLContext | None = None,
    local_config: Path | None = None,
    generally_available: bool = False,
    timeout: float = 2.0,
) -> bool:
    """True if the feature ``key`` (e.g. ``feature.multi-region``) is gated, i.e. not enabled."""
    if generally_available:
        return False
    if hub:
        enabled = await _hub_gate(key, hub=hub, token=token, ssl_context=ssl_context, timeout=timeout)
        if enabled is not None:
            return not enabled
    if local_config is not None:
        try:
            return not LocalConfig(local_config).gates().get(key, False)
        except LocalConfigError as exc:
            log.warning("gate %s: %s; treating it as gated", key, exc)
    return True


async def _hub_gate(key: str, *, hub: str, token: str, ssl_context: ssl.SSLContext | None, timeout: float) -> bool | None:
    """The hub's value of the gate; None if it has none or cannot say."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session,
            session.get(f"{hub.rstrip('/')}/1.0/feature-gates/{key}", headers=headers) as response,
        ):
            if response.status == 404:
                return None
            if response.status != 200:
                log.warning("gate %s: the hub answered %d; falling back to the local config", key, response.status)
                return None
            return bool(orjson.loads(await response.read())["metadata"]["enabled"])
    except (aiohttp.ClientError, TimeoutError, KeyError, orjson.JSONDecodeError) as exc:
        log.warning("gate %s: the hub cannot say (%s); falling back to the local config", key, exc or type(exc).__name__)
        return None
