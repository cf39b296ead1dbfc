"""A small seccomp-bpf deny-list, assembled by hand and installed before any model code runs.

Stdlib only (ctypes): it runs inside the jail. Denied calls fail with EPERM, clone3 with ENOSYS; a
foreign architecture kills the process. Why each call is denied: docs/sandbox.md, "Design notes".
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# BPF opcodes
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # struct seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little endian)

# Every namespace flag clone() accepts: CLONE_NEWTIME|NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
CLONE_NEW_ANY = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
AF_UNIX = 1

_DENIED_NAMES = (
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "open_by_handle_at", "name_to_handle_at", "acct", "swapon", "swapoff", "reboot", "quotactl",
    "syslog", "sethostname", "setdomainname", "settimeofday", "clock_settime", "adjtimex",
    "clock_adjtime", "vhangup", "lookup_dcookie",
)  # fmt: skip


class _Arch:
    def __init__(self, audit: int, numbers: dict[str, int], seccomp_nr: int, x32_bit: bool) -> None:
        self.audit = audit
        self.numbers = numbers
        self.seccomp_nr = seccomp_nr
        self.x32_bit = x32_bit


_X86_64 = _Arch(
    0xC000003E,
    {
        "socket": 41, "clone": 56, "ptrace": 101, "syslog": 103, "vhangup": 153, "pivot_root": 155,
        "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166,
        "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171,
        "init_module": 175, "delete_module": 176, "quotactl": 179, "lookup_dcookie": 212,
        "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250,
        "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
        "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
        "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
        "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435,
        "pidfd_getfd": 438, "mount_setattr": 442,
    },
    317,
    True,
)  # fmt: skip

_AARCH64 = _Arch(
    0xC00000B7,
    {
        "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51, "vhangup": 58,
        "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104, "init_module": 105,
        "delete_module": 106, "clock_settime": 112, "syslog": 116, "ptrace": 117, "reboot": 142,
        "sethostname": 161, "setdomainname": 162, "settimeofday": 170, "adjtimex": 171, "socket": 198,
        "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224, "swapoff": 225,
        "perf_event_open": 241, "name_to_handle_at": 264, "open_by_handle_at": 265, "clock_adjtime": 266,
        "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273, "bpf": 280,
        "userfaultfd": 282, "kexec_file_load": 294, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442,
    },
    277,
    False,
)  # fmt: skip

_ARCHES = {"x86_64": _X86_64, "amd64": _X86_64, "aarch64": _AARCH64, "arm64": _AARCH64}


class SeccompUnsupported(Exception):
    """This machine's architecture or kernel cannot take our filter."""


def _arch(machine: str | None = None) -> _Arch:
    name = (machine or platform.machine()).lower()
    if name not in _ARCHES:
        raise SeccompUnsupported(f"no seccomp syscall table for architecture {name!r}")
    return _ARCHES[name]


Insn = tuple[int, int, int, int]


def _arch_prologue(arch: _Arch) -> list[Insn]:
    """Kill a process calling in from a foreign architecture, then load the syscall number."""
    return [
        (_LD_W_ABS, 0, 0, _OFF_ARCH),
        (_JEQ_K, 1, 0, arch.audit),
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
        (_LD_W_ABS, 0, 0, _OFF_NR),
    ]


def build_program(machine: str | None = None) -> list[Insn]:
    """The filter as (code, jt, jf, k) instructions; every jump is a short forward skip."""
    arch = _arch(machine)
    eperm = _RET_ERRNO | errno.EPERM
    prog = _arch_prologue(arch)
    if arch.x32_bit:
        prog += [(_JGE_K, 0, 1, 0x40000000), (_RET_K, 0, 0, eperm)]
    for name in _DENIED_NAMES:
        prog += [(_JEQ_K, 0, 1, arch.numbers[name]), (_RET_K, 0, 0, eperm)]
    prog += [(_JEQ_K, 0, 1, arch.numbers["clone3"]), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    # clone: refuse any namespace flag
    prog += [
        (_JEQ_K, 0, 4, arch.numbers["clone"]),
        (_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        (_JSET_K, 0, 1, CLONE_NEW_ANY),
        (_RET_K, 0, 0, eperm),
        (_RET_K, 0, 0, _RET_ALLOW),
    ]
    # socket: AF_UNIX only
    prog += [
        (_JEQ_K, 0, 4, arch.numbers["socket"]),
        (_LD_W_ABS, 0, 0, _OFF_ARG0_LO),
        (_JEQ_K, 0, 1, AF_UNIX),
        (_RET_K, 0, 0, _RET_ALLOW),
        (_RET_K, 0, 0, eperm),
    ]
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    return prog


def pack(prog: list[Insn]) -> bytes:
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1


def install() -> None:
    """Set no_new_privs and load the filter on every thread of this process."""
    arch = _arch()
    code = pack(build_program())
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SeccompUnsupported(f"prctl(NO_NEW_PRIVS) failed: {os.strerror(err)}")
    _load_filter(libc, arch.seccomp_nr, code)


def _load_filter(libc: ctypes.CDLL, seccomp_nr: int, code: bytes) -> None:
    """seccomp(SET_MODE_FILTER, TSYNC): the packed program, on every thread of this process."""
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = _SockFprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p))
    rc = libc.syscall(
        ctypes.c_long(seccomp_nr),
        ctypes.c_long(SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise SeccompUnsupported(f"seccomp(SET_MODE_FILTER) failed: {os.strerror(err)}")


_IPC_CREATE = {
    # SysV IPC objects and POSIX message queues persist in the jail's IPC namespace after their
    # creator dies: refuse to create them, so no question can leave one for the next.
    "x86_64": {"shmget": 29, "semget": 64, "msgget": 68, "mq_open": 240},
    "aarch64": {"mq_open": 180, "msgget": 186, "semget": 190, "shmget": 194},
}


def install_ipc_filter() -> None:
    """A second seccomp filter (filters stack): EPERM for creating IPC objects that outlive a process."""
    arch = _arch()
    machine = "x86_64" if arch is _X86_64 else "aarch64"
    eperm = _RET_ERRNO | errno.EPERM
    prog = _arch_prologue(arch)
    for number in _IPC_CREATE[machine].values():
        prog += [(_JEQ_K, 0, 1, number), (_RET_K, 0, 0, eperm)]
    prog.append((_RET_K, 0, 0, _RET_ALLOW))
    code = pack(prog)
    _load_filter(ctypes.CDLL(None, use_errno=True), arch.seccomp_nr, code)
