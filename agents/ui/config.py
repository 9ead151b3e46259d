"""Settings of the inspection UI. Section ``[ui]`` of config.toml; flags of ``mindloop ui``.

    # config.toml
    [ui]
    port = 8765

    $ MINDLOOP_UI_TOKEN=s3cret mindloop ui --host 0.0.0.0
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from mindloop.graph import ConfigError

__all__ = ["UIConfig", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0")
    (True, True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class UIConfig:
    """Where the UI listens and who may use it. What is ready to train is the scheduler's rule and settings
    (``[scheduler] min_flags``, ``cooldown_s``): ``ripe_flags`` and ``cooldown_h`` are no longer settings here,
    and a config that still sets them is refused with a message naming their replacements."""

    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; anything but loopback needs a token, and the UI refuses to start without one"})
    port: int = field(default=8765, metadata={"help": "TCP port"})
    token: str | None = field(default=None, metadata={
        "help": "access token (open http://HOST:PORT/?token=T once, or send 'Authorization: Bearer T'); "
                "unset = none, loopback only", "env": "MINDLOOP_UI_TOKEN"})
    scope: str | None = field(default=None, metadata={"help": "scope shown (default: the graph's configured scope)"})
    ripe_flags: int | None = field(default=None, metadata={
        "help": "removed: the UI shows the scheduler's readiness; set [scheduler] min_flags"})
    cooldown_h: float | None = field(default=None, metadata={
        "help": "removed: the UI shows the scheduler's readiness; set [scheduler] cooldown_s (seconds)"})
    queue_limit: int = field(default=500, metadata={"help": "most flags listed on one page of the review queue"})
    graph_max_nodes: int = field(default=150, metadata={
        "help": "most nodes drawn in a neighbourhood (the nearest are kept)"})
    max_body_bytes: int = field(default=1024 * 1024, metadata={"help": "largest request body; larger = 413"})

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"ui.port must be 1-65535, got {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise ConfigError("ui.token must be at least 8 characters (or unset, for loopback only)")
        if self.ripe_flags is not None:
            raise ConfigError(f"ui.ripe_flags ({self.ripe_flags!r}) was removed: the UI shows the scheduler's "
                              f"readiness; set [scheduler] min_flags instead")
        if self.cooldown_h is not None:
            raise ConfigError(f"ui.cooldown_h ({self.cooldown_h!r}) was removed: the UI shows the scheduler's "
                              f"readiness; set [scheduler] cooldown_s (seconds) instead")
        for name in ("queue_limit", "graph_max_nodes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ui.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"ui.max_body_bytes must be at least 1024, got {self.max_body_bytes}")

    def check_bind(self) -> None:
        """Refuse a non-loopback address without a token (:class:`graph.ConfigError`)."""
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"refusing to listen on {self.host} without a token: pass --token or set "
                              "MINDLOOP_UI_TOKEN (then open the printed URL once), or bind to 127.0.0.1")

    def url(self, *, with_token: bool = False) -> str:
        """The address to open in a browser (with ``?token=`` when asked and a token is set)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = "127.0.0.1" if host in ("0.0.0.0", "[::]") else host
        tail = f"/?token={self.token}" if with_token and self.token else "/"
        return f"http://{host}:{self.port}{tail}"
