"""The jail's entry point: the common start-up, then a worker serving steps or the zygote.

Started by a launcher (nsjail, bwrap or plain) as
    python -I -S -B -X utf8 -c BOOTSTRAP <code_root> <config-json> thyme-worker:<tag>
where <code_root> holds only this package (thyme_cli/sandbox/jail, see host/layout.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

from thyme_cli.sandbox.jail import startup, wire, worker

BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); from thyme_cli.sandbox.jail.main import main; main(sys.argv[2])"
)


def main(raw_config: str) -> NoReturn:
    """Confine, import, lock down (rlimits, seccomp), say hello; then serve as a worker or a zygote."""
    started = time.monotonic()
    sock: socket.socket | None = None
    try:
        cfg = json.loads(raw_config)
        sock = socket.socket(fileno=os.dup(0))
        inherited = _confine(cfg, sock)
        modules = {} if cfg.get("probe") else startup.preload(cfg)
        imported = time.monotonic()
        _lock_down(cfg)
        hello = startup.hello_frame(
            inherited_fds=inherited,
            python=sys.version.split()[0],
            import_s=imported - started,
            out_root=cfg["out_root"],
        )
        if cfg.get("probe"):
            wire.send(sock, hello)
            os._exit(0)
        if cfg.get("zygote"):
            from thyme_cli.sandbox.jail import zygote

            zygote.serve(sock, cfg, modules, hello)
        startup.send_hello(sock, hello, cfg)
        runner = worker.Runner(cfg, modules)
    except BaseException:
        startup.fatal(sock, traceback.format_exc())
    worker.serve(sock, runner)


def _confine(cfg: dict[str, Any], sock: socket.socket) -> list[int]:
    """Before anything else: drop privileges, die with the launcher, close inherited fds, capture
    stdio. Returns the fds the launcher let through (the host refuses a worker that has any)."""
    if cfg.get("drop_to"):
        uid, gid = cfg["drop_to"]
        startup.drop_privileges(int(uid), int(gid))
    startup.die_with_parent()
    # Below the model's threads: a worker booting for the next batch item, or a runaway step,
    # must not starve llama.cpp (whose threads spin-wait on each other) on a small machine.
    os.nice(int(cfg.get("nice", 0)))
    inherited = startup.close_inherited_fds({0, 1, 2, sock.fileno()})
    startup.redirect_stdio(cfg["tmp_dir"])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    sys.path.extend(p for p in cfg["sys_path"] if p not in sys.path)
    return inherited


def _lock_down(cfg: dict[str, Any]) -> None:
    """After the imports, before any model code: hard rlimits, then the seccomp filter(s)."""
    as_zygote = bool(cfg.get("zygote"))
    rlimits = dict(cfg.get("rlimits", {}))
    if as_zygote:
        rlimits.pop("CPU", None)  # per process: each question's child sets it on itself
    startup.apply_rlimits(rlimits)
    if cfg.get("seccomp"):
        from thyme_cli.sandbox.jail import seccomp

        seccomp.install()
        if as_zygote:
            seccomp.install_ipc_filter()
