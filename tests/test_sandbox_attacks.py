"""Every attack class from shared/notes/sandbox.md, against every jail that starts on this machine.

Each test asserts containment AND that the host keeps working afterwards (a normal image step
runs fine, in a fresh sandbox where the attack legitimately used up the old one). Real nsjail and
bwrap, real processes: a backend that cannot start here is skipped with the probe's reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_sandbox_helpers import (
    JAILS,
    host_status,
    jailed_python_pids,
    make_image,
    require_backend,
    wait_until_gone,
    write_png_bomb,
)
from thyme_cli.sandbox import open_sandbox
from thyme_cli.sandbox.base import ExecResult
from thyme_cli.sandbox.host.limits import Limits, MiB
from thyme_cli.sandbox.host.session import STAGE_PREFIX, WorkerSandbox, sweep_stale_stages

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = Limits()
SECRET = "thyme-test-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-attacks")


@pytest.fixture(scope="module")
def photo(workdir: Path) -> Path:
    return make_image(workdir / "photo.png")


@pytest.fixture(scope="module")
def fake_home(workdir: Path) -> Path:
    """A HOME-like dir with a fake SSH key; it is never bound into any jail."""
    home = workdir / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{SECRET}\n")
    return home


@pytest.fixture(scope="module", params=JAILS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def sb(backend: str, photo: Path, workdir: Path) -> Iterator[WorkerSandbox]:
    """One long-lived sandbox per backend for the attacks that do not need a fresh one."""
    with open_sandbox(backend, image=photo, images_dir=workdir / f"images-{backend}", timeout_s=30) as box:
        yield box


def fresh(
    backend: str, image: Path, tmp_path: Path, timeout_s: float = 30, limits: Limits | None = None
) -> WorkerSandbox:
    return open_sandbox(backend, image=image, images_dir=tmp_path / "images", timeout_s=timeout_s, limits=limits)


NORMAL_STEP = (
    "img = Image.open(image_path)\n"
    "c = ImageEnhance.Contrast(img.crop((10, 10, 200, 150)).rotate(15)).enhance(1.5)\n"
    "processed_path = '/mnt/data/temp_processed_images/ok_' + str(len(os.listdir('.'))) + '.png'\n"
    "c.save(processed_path)\n"
    "print(processed_path)\n"
)


def assert_healthy(box: WorkerSandbox) -> None:
    """The host can still use the sandbox: a normal step runs and its image comes back."""
    res = box.run(NORMAL_STEP)
    assert res.ok, (res.error, res.stderr)
    assert len(res.images) == 1 and res.images[0].is_file()


def run_json(box: WorkerSandbox, code: str) -> dict[str, object]:
    """Run attack code that prints one JSON object as its last line."""
    res = box.run(textwrap.dedent(code))
    assert res.ok, (res.error, res.stderr)
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


# --- identity, privileges, fds --------------------------------------------------------------------


def test_worker_is_unprivileged_even_when_host_is_root(sb: WorkerSandbox) -> None:
    info = sb.worker_info
    assert info["ids"] == [65534, 65534, 65534, 65534] and info["groups"] == []
    assert isinstance(info["status"], dict)
    assert int(info["status"]["CapEff"], 16) == 0 and int(info["status"]["CapPrm"], 16) == 0
    assert info["status"]["NoNewPrivs"] == "1" and info["status"]["Seccomp"] == "2"
    pids = jailed_python_pids(sb.worker_marker)
    assert pids, "the jailed worker is not visible from the host"
    for pid in pids:  # as the HOST sees it: never uid 0 outside
        uids = host_status(pid)["Uid"].split()
        expected = "65534" if os.geteuid() == 0 else str(os.geteuid())
        assert uids == [expected] * 4


def test_inherited_host_fds_are_not_visible(backend: str, photo: Path, tmp_path: Path) -> None:
    secret_file = tmp_path / "host-secret.txt"
    secret_file.write_text(SECRET)
    fd = os.open(secret_file, os.O_RDONLY)
    os.set_inheritable(fd, True)  # deliberately leakable
    try:
        with fresh(backend, photo, tmp_path) as box:
            assert box.worker_info["inherited_fds"] == []
            out = run_json(
                box,
                """
                links, data = {}, []
                for name in os.listdir('/proc/self/fd'):
                    try:
                        links[name] = os.readlink('/proc/self/fd/' + name)
                        data.append(os.pread(int(name), 200, 0).decode('latin-1'))
                    except OSError:
                        pass
                for n in range(3, 1024):
                    try:
                        data.append(os.pread(n, 200, 0).decode('latin-1'))
                    except OSError:
                        pass
                print(json.dumps({'links': links, 'data': data}))
                """,
            )
            assert "host-secret" not in json.dumps(out["links"])
            assert SECRET not in json.dumps(out["data"])
            assert_healthy(box)
    finally:
        os.close(fd)


def test_nested_user_namespaces_are_refused(sb: WorkerSandbox) -> None:
    out = run_json(
        sb,
        f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        res = {{}}
        for name, flag in [('user', 0x10000000), ('mount', 0x20000), ('net', 0x40000000), ('pid', 0x20000000)]:
            rc = libc.unshare(flag)
            res[name] = [rc, ctypes.get_errno()]
        if {platform.machine() == "x86_64"}:
            rc = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)  # raw clone(CLONE_NEWUSER|SIGCHLD)
            if rc == 0:
                os._exit(0)
            res['clone'] = [rc, ctypes.get_errno()]
            res['clone3'] = [libc.syscall(435, 0, 0), ctypes.get_errno()]
        print(json.dumps(res))
        """,
    )
    for name in ("user", "mount", "net", "pid", "clone"):
        if name in out:
            assert out[name] == [-1, 1], f"{name}: {out[name]}"  # -1 with EPERM
    if "clone3" in out:
        assert out["clone3"] == [-1, 38]  # ENOSYS, so libc falls back to the filtered clone
    assert_healthy(sb)


# --- filesystem ----------------------------------------------------------------------------------


def test_only_tmp_and_output_are_writable(sb: WorkerSandbox, photo: Path) -> None:
    digest = hashlib.sha256(photo.read_bytes()).hexdigest()
    out = run_json(
        sb,
        """
        results = {}
        for path in ['/evil', '/etc/evil', '/usr/evil', '/usr/lib/evil', '/opt/thyme/evil',
                     '/mnt/data/input/evil', '/mnt/data/evil', '/dev/evil', '/proc/evil']:
            try:
                with open(path, 'w') as fh:
                    fh.write('x')
                results[path] = 'WROTE'
            except OSError as e:
                results[path] = type(e).__name__
        for label, action in [('write', lambda: open(image_path, 'r+b').write(b'x')),
                              ('truncate', lambda: os.truncate(image_path, 0)),
                              ('chmod', lambda: os.chmod(image_path, 0o666)),
                              ('remove', lambda: os.remove(image_path)),
                              ('rename', lambda: os.rename(image_path, image_path + '.bak'))]:
            try:
                action()
                results['image-' + label] = 'DONE'
            except OSError as e:
                results['image-' + label] = type(e).__name__
        writable = []
        for root, dirs, files in os.walk('/', followlinks=False):
            if root == '/proc' or root.startswith('/proc/'):
                dirs[:] = []
                continue
            try:
                fd = os.open(os.path.join(root, '.thyme-probe'), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except OSError:
                continue
            os.close(fd)
            os.unlink(os.path.join(root, '.thyme-probe'))
            writable.append(root)
        results['writable'] = writable
        print(json.dumps(results))
        """,
    )
    writable = out.pop("writable")
    assert all(v not in ("WROTE", "DONE") for v in out.values()), out
    assert isinstance(writable, list)
    assert all(w == "/tmp" or w.startswith(("/tmp/", "/mnt/data/output")) for w in writable), writable
    assert hashlib.sha256(photo.read_bytes()).hexdigest() == digest
    assert_healthy(sb)


def test_host_secrets_are_unreachable(backend: str, photo: Path, tmp_path: Path, fake_home: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setenv("HOME", str(fake_home))
    monkeypatch.setenv("THYME_FAKE_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    key = fake_home / ".ssh" / "id_rsa"
    with fresh(backend, photo, tmp_path) as box:
        out = run_json(
            box,
            f"""
            found = {{}}
            for path in [{str(key)!r}, os.path.expanduser('~/.ssh/id_rsa'), '/root/.ssh/id_rsa',
                         '/etc/shadow', '/etc/passwd', '/proc/1/environ', '/proc/self/environ',
                         '/proc/1/root/etc/shadow']:
                try:
                    found[path] = open(path, 'rb').read(4096).decode('latin-1')
                except OSError as e:
                    found[path] = type(e).__name__
            found['env'] = dict(os.environ)
            found['listing'] = {{d: (os.listdir(d) if os.path.isdir(d) else None)
                                for d in ['/', '/root', '/tmp', '/home', {str(fake_home)!r}]}}
            print(json.dumps(found))
            """,
        )
        blob = json.dumps(out)
        assert SECRET not in blob
        assert out["/etc/shadow"] in ("FileNotFoundError", "PermissionError")
        assert "THYME_FAKE_API_KEY" not in out["env"] and "OPENAI_API_KEY" not in out["env"]  # type: ignore[operator]
        assert_healthy(box)


# --- network ---------------------------------------------------------------------------------------


def test_network_is_unreachable(sb: WorkerSandbox) -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    abstract_name = "\0thyme-test-" + uuid.uuid4().hex
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(abstract_name)
    unix.listen(8)
    unix.setblocking(False)
    port = tcp.getsockname()[1]
    try:
        out = run_json(
            sb,
            f"""
            import socket
            res = {{}}
            def attempt(label, fn):
                try:
                    fn()
                    res[label] = 'CONNECTED'
                except Exception as e:
                    res[label] = type(e).__name__
            attempt('tcp', lambda: socket.create_connection(('127.0.0.1', {port}), timeout=3).send(b'x'))
            attempt('tcp6', lambda: socket.create_connection(('::1', {port}), timeout=3))
            def abstract():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(3)
                s.connect({abstract_name!r})
                s.send(b'x')
            attempt('abstract', abstract)
            attempt('dns', lambda: socket.getaddrinfo('example.com', 80))
            def udp():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.sendto(b'x' * 10, ('8.8.8.8', 53))
            attempt('udp', udp)
            attempt('raw', lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
            attempt('netlink', lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
            print(json.dumps(res))
            """,
        )
        assert all(v != "CONNECTED" for v in out.values()), out
        for listener in (tcp, unix):
            with pytest.raises(BlockingIOError):
                listener.accept()  # nothing ever reached the host
    finally:
        tcp.close()
        unix.close()
    assert_healthy(sb)


# --- processes ----------------------------------------------------------------------------------------


def test_no_shell_and_children_stay_jailed(sb: WorkerSandbox) -> None:
    out = run_json(
        sb,
        """
        import subprocess, sys
        res = {}
        for cmd in (['/bin/sh', '-c', 'echo SHELL-RAN'], ['sh', '-c', 'echo SHELL-RAN'], ['/usr/bin/env', 'id']):
            try:
                res[cmd[0]] = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            except OSError as e:
                res[cmd[0]] = type(e).__name__
        res['system'] = os.system('echo SHELL-RAN')
        child = subprocess.run([sys.executable, '-c', 'import os; print(os.getuid(), os.path.exists("/etc"))'],
                               capture_output=True, text=True, timeout=60)
        res['child'] = child.stdout.strip()
        print(json.dumps(res))
        """,
    )
    assert "SHELL-RAN" not in json.dumps(out) and "uid=" not in json.dumps(out)
    assert out["child"] == "65534 False"  # a child process runs, but inside the same jail
    assert_healthy(sb)


def test_fork_bomb_is_capped_by_nproc(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path, timeout_s=30) as box:
        res = box.run(
            "import time\n"
            "pids = []\n"
            "try:\n"
            "    for i in range(100000):\n"
            "        pid = os.fork()\n"
            "        if pid == 0:\n"
            "            time.sleep(600)\n"
            "            os._exit(0)\n"
            "        pids.append(pid)\n"
            "finally:\n"
            "    print('forked', len(pids))\n"
        )
        assert res.error is not None and "BlockingIOError" in res.error, res.error
        forked = int(res.stdout.split()[-1])
        assert 0 < forked < DEFAULTS.nproc
        after = box.run("print(len([p for p in os.listdir('/proc') if p.isdigit()]))")
        assert after.ok and int(after.stdout) <= 2  # the stragglers were killed after the step
        assert_healthy(box)


def test_exponential_fork_bomb_times_out_and_is_cleaned_up(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path, timeout_s=3) as box:
        marker = box.worker_marker
        res = box.run("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
        assert res.timed_out
        assert wait_until_gone(marker) == []
        assert_healthy(box)


def test_memory_bombs_hit_the_address_space_limit(sb: WorkerSandbox) -> None:
    for code in (
        "b = bytearray(8 * 1024 ** 3)",
        "a = np.ones((40000, 40000, 3))",
        "def grow():\n    chunks = []\n    while True:\n        chunks.append(bytearray(64 << 20))\ngrow()",
    ):
        res = sb.run(code)
        assert res.error is not None and "MemoryError" in res.error, (code, res.error)
    peak = sb.run("print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])")
    assert peak.ok and int(peak.stdout) * 1024 <= DEFAULTS.memory_mb * MiB
    assert_healthy(sb)


def test_cpu_spin_and_sleep_forever_time_out(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path, timeout_s=3) as box:
        for code in ("while True:\n    pass", "import time\ntime.sleep(10 ** 6)"):
            marker = box.worker_marker
            res = box.run(code)
            assert res.timed_out and res.error == "timed out after 3 s"
            assert wait_until_gone(marker) == []
            assert_healthy(box)


def test_kill_everything_and_the_host(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path) as box:
        res = box.run(
            "import signal\n"
            "results = {}\n"
            f"for target in (-1, 1, {os.getpid()}, {os.getppid()}):\n"
            "    try:\n"
            "        os.kill(target, signal.SIGKILL)\n"
            "        results[target] = 'sent'\n"
            "    except OSError as e:\n"
            "        results[target] = type(e).__name__\n"
            f"print(json.dumps(results), os.path.exists('/proc/{os.getpid()}'))\n"
        )
        assert res.stdout.strip().endswith("False")  # the host's pid does not exist in the jail
        # a forked child killing everything it can: may take the worker down, never the host
        box.run("if os.fork() == 0:\n    os.kill(-1, 9)\n    os._exit(0)\nimport time\ntime.sleep(1)")
        assert os.getpid() > 0 and os.getppid() > 1  # we (the host) are alive and not orphaned
        assert_healthy(box)


def test_daemon_does_not_outlive_the_step(sb: WorkerSandbox) -> None:
    res = sb.run(
        "import time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        while True:\n"
        "            time.sleep(1)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print('daemonized')\n"
    )
    assert res.ok and res.stdout.strip() == "daemonized"
    after = sb.run(
        "import time\n"
        "def alive():\n"
        "    out = []\n"
        "    for p in os.listdir('/proc'):\n"
        "        try:\n"
        "            if p.isdigit() and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':\n"
        "                out.append(int(p))\n"
        "        except OSError:\n"
        "            pass\n"
        "    return sorted(out)\n"
        "for _ in range(100):\n"  # bwrap's init reaps the killed daemon's zombie asynchronously
        "    if len(alive()) <= 2:\n"
        "        break\n"
        "    time.sleep(0.05)\n"
        "print(alive())"
    )
    jail_pids = json.loads(after.stdout)
    assert len(jail_pids) <= 2, jail_pids  # the worker (and bwrap's init): the daemon is dead
    assert len(jailed_python_pids(sb.worker_marker)) == 1
    assert_healthy(sb)


LAUNCHER = """
import sys
from pathlib import Path
from thyme_cli.sandbox import open_sandbox
sb = open_sandbox(sys.argv[1], image=Path(sys.argv[2]), images_dir=Path(sys.argv[3]), timeout_s=600)
sb.wait_ready()
print(sb.worker_marker, flush=True)
sb.run('''
import time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(1)
    os._exit(0)
os.waitpid(pid, 0)
while True:
    time.sleep(1)
''')
"""


def test_sigkilled_launcher_leaves_no_jailed_process(backend: str, photo: Path, tmp_path: Path) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    proc = subprocess.Popen(
        [sys.executable, str(script), backend, str(photo), str(tmp_path / "images")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        marker = proc.stdout.readline().strip()
        assert marker.startswith("thyme-worker:")
        deadline_polls = 600
        while len(jailed_python_pids(marker)) < 2 and deadline_polls:  # worker + its daemon
            deadline_polls -= 1
            threading.Event().wait(0.05)
        assert len(jailed_python_pids(marker)) >= 2, "the step never started its daemon"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert wait_until_gone(marker) == []
        # the killed launcher could not remove its stage dir; the next thyme process sweeps it
        leftovers = list(Path(tempfile.gettempdir()).glob(f"{STAGE_PREFIX}{proc.pid}-*"))
        assert len(leftovers) == 1
        sweep_stale_stages()
        assert not leftovers[0].exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- output ------------------------------------------------------------------------------------------


def test_stdout_floods_are_capped(sb: WorkerSandbox) -> None:
    cap = DEFAULTS.max_output_bytes
    cases = {
        "print('x' * 50_000_000)": 50_000_001 - cap,
        "import sys\nsys.stderr.write('e' * 3_000_000)": None,
        "for i in range(300_000):\n    print(i)": None,
        "os.write(1, b'y' * 20_000_000)": 20_000_000 - cap,
    }
    for code, dropped in cases.items():
        res = sb.run(code)
        assert res.ok, (code, res.error)
        text = res.stderr if "stderr" in code else res.stdout
        assert len(text.encode()) <= cap + 100, code
        assert "[output truncated:" in text
        if dropped is not None:
            assert f"[output truncated: {dropped} more bytes]" in text
    flood = sb.run("while True:\n    os.write(1, b'z' * (1 << 20))")  # until /tmp is full
    assert flood.error is not None and "OSError" in flood.error
    assert len(flood.stdout.encode()) <= cap + 100
    assert_healthy(sb)


def test_disk_fill_stays_in_the_jails_tmpfs(backend: str, photo: Path, tmp_path: Path) -> None:
    with fresh(backend, photo, tmp_path) as box:
        out = run_json(
            box,
            """
            import errno
            res = {}
            def fill(path):
                written = 0
                try:
                    with open(path, 'wb') as f:
                        chunk = bytes(1 << 20)
                        for _ in range(4096):
                            f.write(chunk)
                            f.flush()
                            written += len(chunk)
                except OSError as e:
                    return [written, e.errno]
                return [written, 0]
            res['big1'] = fill('/mnt/data/output/big1')
            res['big2'] = fill('/mnt/data/output/big2')
            res['big3'] = fill('/mnt/data/output/big3')
            try:
                with open('/mnt/data/output/sparse', 'wb') as f:
                    f.truncate(10 * 1024 ** 3)
                res['sparse'] = 'made'
            except OSError as e:
                res['sparse'] = e.errno
            try:
                with open('/mnt/data/output/sparse2', 'wb') as f:
                    f.seek(10 * 1024 ** 3)
                    f.write(b'x')
                res['sparse2'] = 'made'
            except OSError as e:
                res['sparse2'] = e.errno
            res['sizes'] = {n: os.stat('/mnt/data/output/' + n).st_size
                            for n in os.listdir('/mnt/data/output') if n.startswith(('big', 'sparse'))}
            for n in list(res['sizes']):
                os.remove('/mnt/data/output/' + n)
            print(json.dumps(res))
            """,
        )
        file_cap, disk_cap = DEFAULTS.file_size_mb * MiB, DEFAULTS.output_mb * MiB
        assert out["big1"] == [file_cap, 27]  # EFBIG at RLIMIT_FSIZE
        assert out["sparse"] == 27 and out["sparse2"] == 27
        sizes = out["sizes"]
        assert isinstance(sizes, dict)
        assert all(s <= file_cap for s in sizes.values())
        assert sum(sizes.values()) <= disk_cap  # ENOSPC: the tmpfs is full
        stage_bytes = sum(f.stat().st_size for f in box._stage.root.rglob("*") if f.is_file())
        assert stage_bytes < 5 * MiB  # nothing landed on the host's disk
        assert_healthy(box)


@pytest.mark.parametrize("where", ["/mnt/data/output", "/tmp"])
def test_empty_files_are_capped_by_inodes(backend: str, photo: Path, tmp_path: Path, where: str) -> None:
    """nsjail: the tmpfs's nr_inodes stops the code (ENOSPC). bwrap cannot set nr_inodes, so the
    host counts the jail's files while the step runs and stops it past the limit (the issue saw
    501,915 empty files in 5 s). Either way, far fewer than the step could make, and a fresh jail."""
    with fresh(backend, photo, tmp_path) as box:
        started = time.monotonic()
        res = box.run(
            "count = 0\n"
            "try:\n"
            "    for i in range(2000000):\n"
            f"        open(f'{where}/e{{i}}', 'w').close()\n"
            "        count += 1\n"
            "finally:\n"
            "    print(count)\n"
        )
        assert time.monotonic() - started < 20
        if backend == "nsjail":
            assert res.error is not None and "No space left" in res.error
            assert int(res.stdout) < DEFAULTS.inodes
            box.run(f"import glob\nfor p in glob.glob('{where}/e*'):\n    os.remove(p)")
        else:
            assert res.error == f"the step made more than {DEFAULTS.inodes} files in " + (
                "/tmp" if where == "/tmp" else "the output directory"
            ), res.error
            assert res.restarted
            after = box.run(f"print(len(os.listdir('{where}')))")
            assert int(after.stdout) < 10  # a fresh jail: the files went with the old one
        assert_healthy(box)


def test_planted_symlinks_fifos_and_hardlinks_are_not_followed(sb: WorkerSandbox, fake_home: Path) -> None:
    key = fake_home / ".ssh" / "id_rsa"
    code = (
        "d = '/mnt/data/temp_processed_images'\n"
        "os.symlink('/etc/passwd', d + '/passwd.png')\n"
        f"os.symlink({str(key)!r}, d + '/secret.png')\n"
        "os.mkfifo(d + '/fifo.png')\n"
        "Image.new('RGB', (80, 80), 'red').save(d + '/real.png')\n"
        "os.link(d + '/real.png', d + '/hard.png')\n"
        "os.symlink('/', d + '/rootlink')\n"
        f"processed_path = d + '/rootlink' + {str(key)!r}\n"
        "print(d + '/fifo.png', d + '/secret.png')\n"
    )
    box: dict[str, ExecResult] = {}
    worker = threading.Thread(target=lambda: box.setdefault("res", sb.run(code)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the host blocked reading the output directory"
    res = box["res"]
    assert res.ok, res.error
    assert len(res.images) == 1 and res.images[0].name.endswith(("-real.png", "-hard.png"))
    assert "fifo.png: not a regular file" in res.stderr
    assert "secret.png" in res.stderr and "passwd.png" in res.stderr
    assert all(SECRET.encode() not in p.read_bytes() for p in sb.images_dir.iterdir())
    assert key.read_text().startswith("-----BEGIN")
    assert_healthy(sb)


@pytest.fixture(scope="module")
def png_bomb(workdir: Path) -> Path:
    return write_png_bomb(workdir / "bomb.png")


def test_decompression_bomb_is_stopped_by_the_memory_limit(
    backend: str, png_bomb: Path, photo: Path, tmp_path: Path
) -> None:
    assert png_bomb.stat().st_size < 3 * MiB
    with fresh(backend, png_bomb, tmp_path) as box:
        res = box.run("Image.MAX_IMAGE_PIXELS = None\nim = Image.open(image_path)\nprint(im.size)\nim.load()")
        assert res.stdout.strip() == "(30000, 30000)"
        assert res.error is not None and "MemoryError" in res.error, res.error
        # handing the bomb back to the host: it refuses before decoding
        res = box.run("import shutil\nshutil.copy(image_path, '/mnt/data/temp_processed_images/bomb.png')")
        assert res.ok and res.images == []
        assert f"bomb.png: larger than the {DEFAULTS.max_image_pixels} pixel limit" in res.stderr
        peak = box.run("print([l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1])")
        assert int(peak.stdout) * 1024 <= DEFAULTS.memory_mb * MiB
    with fresh(backend, photo, tmp_path) as box:
        assert_healthy(box)
