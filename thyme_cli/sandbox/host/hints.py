"""Why no sandbox can start here, and what the user can do about it.

The usual culprits: Ubuntu >= 23.10 restricts unprivileged user namespaces through AppArmor, Debian
kernels before 11 had them switched off, and Docker's default seccomp profile forbids the
unshare/mount calls every namespace sandbox needs.
"""

from __future__ import annotations

from pathlib import Path

NONE_ADVICE = "as a last resort, `--sandbox none` runs the model's code WITHOUT any isolation, at your own risk"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def in_container() -> bool:
    if Path("/.dockerenv").exists() or Path("/run/.containerenv").exists():
        return True
    cgroup = _read("/proc/1/cgroup") or ""
    return any(word in cgroup for word in ("docker", "containerd", "kubepods", "libpod"))


def unavailable_hint() -> str:
    """One hint line listing the fixes that apply to this machine (most likely first)."""
    fixes: list[str] = []
    if _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        fixes.append(
            "Ubuntu restricts unprivileged user namespaces: run "
            "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` "
            "(or install an AppArmor profile that allows userns for bwrap/nsjail)"
        )
    if _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        fixes.append("user namespaces are off: run `sudo sysctl -w kernel.unprivileged_userns_clone=1`")
    if _read("/proc/sys/user/max_user_namespaces") == "0":
        fixes.append("user namespaces are off: run `sudo sysctl -w user.max_user_namespaces=15000`")
    if in_container():
        fixes.append(
            "inside a container: run thyme outside it, or start the container with "
            "`--security-opt seccomp=unconfined --security-opt apparmor=unconfined`"
        )
    if not fixes:
        fixes.append(
            "check that unprivileged user namespaces are allowed (`unshare --user --map-root-user true` should succeed)"
        )
    fixes.append(NONE_ADVICE)
    return "; ".join(fixes)
