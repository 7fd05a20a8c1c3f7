"""The config file, watched: added, removed and changed servers take effect without a restart.

``watchfiles`` (inotify on Linux, polling elsewhere) watches the file's directory rather than
the file, because editors save by writing a new file and renaming it over the old one, which
ends a watch on the file itself. Changes are debounced by watchfiles (a burst of writes is one
change). Each change is loaded as at start-up (``load_config``); a file that does not validate
is refused with one log line naming the server and the field, and the running set is kept.
A file that validates is applied with ``DownstreamPool.apply``, and its ``profiles`` replace the
running ones in place (the auth gate looks a profile up per request, so an edit applies to the
next request of every session).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import watchfiles

from pml_gateway.auth.profiles import Profile
from pml_gateway.proxy.downstream.config import ConfigError, load_config, load_profiles
from pml_gateway.proxy.downstream.supervisor import DownstreamPool

logger = logging.getLogger(__name__)

__all__ = ["watch_config"]


async def watch_config(
    path: Path, pool: DownstreamPool, profiles: dict[str, Profile] | None = None, *, debounce_ms: int = 200
) -> None:
    """Apply every valid edit of ``path`` to ``pool`` (and ``profiles``) until cancelled."""
    path = Path(path).resolve()

    def is_config(change: watchfiles.Change, changed: str) -> bool:
        return Path(changed) == path

    # Cancelled alone, awatch waits for its watcher thread, which only returns at its 5 s timeout:
    # every shutdown took 5 s more. Its thread checks this event every 50 ms instead.
    stop = anyio.Event()

    async def stop_when_cancelled() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            stop.set()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(stop_when_cancelled)
        async for _changes in watchfiles.awatch(path.parent, watch_filter=is_config, debounce=debounce_ms, recursive=False, stop_event=stop):
            await reload(path, pool, profiles)
        tasks.cancel_scope.cancel()


async def reload(path: Path, pool: DownstreamPool, profiles: dict[str, Profile] | None = None) -> dict[str, list[str]] | None:
    """Load ``path`` and apply it; None (and one log line) when it does not validate."""
    try:
        servers = load_config(path)
        new_profiles = load_profiles(path)
    except ConfigError as exc:
        logger.error("config change refused, the running servers and profiles are kept: %s", exc)
        return None
    if profiles is not None and new_profiles != profiles:
        profiles.clear()
        profiles.update(new_profiles)
        logger.info("config %s reloaded: profiles now %s", path, ", ".join(sorted(profiles)) or "none")
    changes = await pool.apply(servers)
    summary = ", ".join(f"{kind} {', '.join(names)}" for kind, names in changes.items() if names)
    logger.info("config %s reloaded: %s", path, summary or "no server changed")
    return changes
