"""The agent's own Linux capabilities, for kinds that cannot work without one.

The network kinds (firewall, route) need CAP_NET_ADMIN: without it the kernel
refuses every nftables request and every route change with EPERM, which nft
prints as "Operation not permitted (you must be root)". That is misleading for
an agent that does run as root, in a container started without the capability
(systemd-nspawn grants it only with ``--capability=CAP_NET_ADMIN`` or
``--private-network``; Docker only with ``--cap-add=NET_ADMIN``). So when a
kind is refused with EPERM, it asks :func:`net_admin_missing` whether the
missing capability is the reason, and if so fails with the
:class:`~modules.errors.Unavailable` it returns, which names it.

The check runs only after a refusal, never on the way to a change: reading
``/proc/self/status`` costs nothing, but a process that has the capability
and is refused anyway (another user namespace owns the network namespace, a
security module said no) must keep the kernel's own message.

The effective set is the ``CapEff`` line of ``/proc/self/status``, a
hexadecimal mask in which bit 12 is CAP_NET_ADMIN::

    CapEff:	00000000fcecbfff      (a systemd-nspawn container given CAP_NET_ADMIN)
    CapEff:	00000000fcecafff      (the same container without it)

Children of the agent (nft) have the capability if the agent has it: it runs
as root, so an exec keeps every capability of its bounding set.
"""

from __future__ import annotations

from pathlib import Path

from modules.errors import Unavailable

CAP_NET_ADMIN = 12
_STATUS = Path("/proc/self/status")


def effective(status: str) -> int:
    """The effective capability mask in the text of ``/proc/<pid>/status``. Pure.

    Raises ValueError when the text has no readable ``CapEff`` line.
    """
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    raise ValueError("no CapEff line in the process status")


def has(status: str, capability: int) -> bool:
    """Whether the process whose ``/proc/<pid>/status`` is ``status`` holds ``capability``."""
    return bool(effective(status) >> capability & 1)


def net_admin_missing(
    purpose: str, refused: str, status_path: Path = _STATUS
) -> Unavailable | None:
    """The error to raise for a refusal (EPERM) if this process lacks CAP_NET_ADMIN.

    ``purpose`` completes "the agent needs it to ..." (``change nftables``);
    ``refused`` says what was refused (``cannot list table inet plumb``).
    None when the process has the capability, or when its status cannot be
    read: then the capability is not known to be the reason, and the caller
    reports the refusal as it came.
    """
    try:
        held = has(status_path.read_text(), CAP_NET_ADMIN)
    except (OSError, ValueError):
        return None
    if held:
        return None
    return Unavailable(
        f"CAP_NET_ADMIN is missing (the agent needs it to {purpose}; running in a "
        f"container without --capability=CAP_NET_ADMIN?): {refused}"
    )
