"""Config reload on SIGHUP: which changed settings take effect now, which need a restart.

`diff` and `effective` are pure: they compare two configs key by key (dotted names, as
validation errors name them). `Reloader` reads the files again with the startup loader (flags
still win), applies the reloadable changes through small setters on the services and logs the
rest as needing a restart. A file that fails to load changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cri_py import log as logging_setup
from cri_py.config import Config, RegistryHost, to_data
from cri_py.errors import ConfigError
from cri_py.log import get_logger

log = get_logger("cri_py.reload")

# Settings a running daemon can change; a key is reloadable when it is one of these or lies
# under one (`registries.<host>.mirrors`).
RELOADABLE = (
    "log_level",
    "log_format",
    "registries",
    "network.cni_conf_dir",
    "network.cni_bin_dirs",
    "images.pinned",
)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):  # an empty one adds no key (`registries: {}`)
            flat.update(_flatten(value, dotted))
        else:
            flat[dotted] = value
    return flat


def _reloadable(key: str) -> bool:
    return any(key == r or key.startswith(f"{r}.") for r in RELOADABLE)


@dataclass(frozen=True)
class ConfigChanges:
    """The dotted keys whose values differ, split by whether a reload applies them."""

    reloadable: tuple[str, ...]
    restart_needed: tuple[str, ...]

    def touches(self, prefix: str) -> bool:
        """Whether a reloadable change is `prefix` or lies under it."""
        return any(k == prefix or k.startswith(f"{prefix}.") for k in self.reloadable)


def diff(old: Config, new: Config) -> ConfigChanges:
    """The keys that differ between `old` and `new`, sorted; a registry host added or removed
    shows as its own key (`registries.<host>`), a changed one as its changed fields."""
    before, after = _flatten(to_data(old)), _flatten(to_data(new))
    changed: list[str] = []
    for key in sorted(before.keys() | after.keys()):
        if before.get(key, _MISSING) != after.get(key, _MISSING):
            changed.append(key)
    changed = _collapse_hosts(changed, old.registries, new.registries)
    return ConfigChanges(
        reloadable=tuple(k for k in changed if _reloadable(k)),
        restart_needed=tuple(k for k in changed if not _reloadable(k)),
    )


_MISSING = object()


def _collapse_hosts(
    keys: Sequence[str], old: Mapping[str, RegistryHost], new: Mapping[str, RegistryHost]
) -> list[str]:
    """`registries.<host>.*` of a host that appeared or went away become `registries.<host>`."""
    # Longest first: host names contain dots, and one may be a prefix of another.
    whole = sorted(old.keys() ^ new.keys(), key=len, reverse=True)
    result: list[str] = []
    for key in keys:
        if key.startswith("registries."):
            host = next((h for h in whole if key.startswith(f"registries.{h}.")), None)
            if host is not None:
                if f"registries.{host}" not in result:
                    result.append(f"registries.{host}")
                continue
        result.append(key)
    return result


def effective(old: Config, new: Config) -> Config:
    """What the daemon runs with after a reload: `new`'s reloadable settings, `old`'s others
    (they change only with a restart, so a later reload still reports them)."""
    return dataclasses.replace(
        old,
        log_level=new.log_level,
        log_format=new.log_format,
        registries=new.registries,
        network=dataclasses.replace(
            old.network,
            cni_conf_dir=new.network.cni_conf_dir,
            cni_bin_dirs=new.network.cni_bin_dirs,
        ),
        images=dataclasses.replace(old.images, pinned=new.images.pinned),
    )


class ImageSettings(Protocol):
    def set_registries(self, registries: Mapping[str, RegistryHost]) -> None: ...
    def set_pinned(self, pinned: Sequence[str]) -> None: ...


class NetworkSettings(Protocol):
    def set_cni_dirs(self, conf_dir: str, bin_dirs: Sequence[str]) -> None: ...


class Reloader:
    """Re-reads the config on demand (SIGHUP) and applies what can change while running."""

    def __init__(
        self,
        config: Config,
        load: Callable[[], Config],
        images: ImageSettings,
        network: NetworkSettings,
        setup_logging: Callable[[str, str], None] = logging_setup.setup,
    ) -> None:
        self.config = config
        self._load = load
        self._images = images
        self._network = network
        self._setup_logging = setup_logging

    def reload(self) -> ConfigChanges | None:
        """One reload; None when the files could not be loaded (the old config stays)."""
        log.info("reloading config")
        try:
            new = self._load()
        except ConfigError as e:
            log.error("config reload failed; keeping the running config", error=str(e))
            return None
        except OSError as e:
            log.error(
                "config reload failed; keeping the running config",
                file=str(e.filename or ""),
                error=e.strerror or str(e),
            )
            return None
        changes = diff(self.config, new)
        if changes.touches("log_level") or changes.touches("log_format"):
            self._setup_logging(new.log_level, new.log_format)
        if changes.touches("registries"):
            self._images.set_registries(new.registries)
        if changes.touches("images.pinned"):
            self._images.set_pinned(new.images.pinned)
        if changes.touches("network.cni_conf_dir") or changes.touches("network.cni_bin_dirs"):
            self._network.set_cni_dirs(new.network.cni_conf_dir, new.network.cni_bin_dirs)
        self.config = effective(self.config, new)
        if changes.restart_needed:
            log.warning(
                "config changes need a restart; running with the old values",
                keys=",".join(changes.restart_needed),
            )
        log.info(
            "config reloaded",
            applied=",".join(changes.reloadable) or "none",
            log_level=self.config.log_level,
        )
        return changes
