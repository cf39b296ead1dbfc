"""SandboxPool: one warm jail per batch, a fresh forked child per question. Real jails, real processes.

Isolation between questions that share a jail is the point, so most tests run question A, let it
misbehave or leave something behind, and check from question B (and from the host) that nothing
of A is left: processes, files, variables, images. Plus the attack classes of
test_sandbox_attacks.py that concern the shared jail (signals to the zygote, fork and memory
bombs, timeouts, a SIGKILLed launcher), and the pool's own plumbing (restarts, a dead zygote,
concurrent questions, opting out). Every backend that starts here; skipped with the probe's reason
otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.test_sandbox_helpers import (
    JAILS,
    host_status,
    jailed_python_pids,
    make_image,
    require_backend,
    wait_until_gone,
)
from thyme_cli import step_images as store
from thyme_cli.sandbox.host.limits import Limits, MiB
from thyme_cli.sandbox.host.pool import POOL_ENV, PerQuestionPool, PooledSandbox, SandboxPool, open_pool
from thyme_cli.sandbox.host.session import RESTART_NOTE, WorkerSandbox

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = Limits()
CAPTURE_FILES = [".thyme-stderr", ".thyme-stdout"]


@pytest.fixture(scope="module", params=JAILS)
def backend(request: pytest.FixtureRequest) -> str:
    require_backend(request.param)
    return str(request.param)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Inputs that differ in size, so a question can tell which image it was given."""
    folder = tmp_path_factory.mktemp("pool-inputs")
    return [make_image(folder / f"input{i}.png", (200 + 10 * i, 150 + i)) for i in range(12)]


@pytest.fixture
def pool(backend: str) -> Iterator[SandboxPool]:
    with open_pool(backend, timeout_s=20) as opened:
        assert isinstance(opened, SandboxPool), getattr(opened, "reason", opened)
        yield opened


def ask(pool: SandboxPool, image: Path, tmp_path: Path, name: str = "q") -> PooledSandbox:
    box = pool.open(image=image, images_dir=tmp_path / f"images-{name}")
    assert isinstance(box, PooledSandbox)
    return box


def run_json(box: WorkerSandbox, code: str) -> dict[str, object]:
    """Run code that prints one JSON object as its last line."""
    res = box.run(textwrap.dedent(code))
    assert res.ok, (res.error, res.stderr)
    out: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


NORMAL_STEP = (
    "img = Image.open(image_path)\n"
    "c = ImageEnhance.Contrast(img.crop((10, 10, 150, 120)).rotate(15)).enhance(1.5)\n"
    "processed_path = '/mnt/data/temp_processed_images/ok.png'\n"
    "c.save(processed_path)\n"
    "print(processed_path)\n"
)

LIVE_PIDS = """
import time
def live_pids():
    out = []
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0] != 'Z':
                out.append(int(p))
        except OSError:
            pass
    return sorted(out)
"""


def assert_healthy(box: WorkerSandbox) -> None:
    res = box.run(NORMAL_STEP)
    assert res.ok, (res.error, res.stderr)
    assert len(res.images) == 1 and res.images[0].is_file()


def assert_alone(box: WorkerSandbox) -> None:
    """Inside the question: nothing runs in the jail but the zygote (PID 1) and this child."""
    out = run_json(box, LIVE_PIDS + "print(json.dumps({'pids': live_pids(), 'me': os.getpid()}))")
    assert out["pids"] == [1, out["me"]], out


def zygote_host_pid(box: PooledSandbox) -> int:
    box.wait_ready()
    launcher = box.worker_pid
    assert launcher is not None
    pids = [p for p in jailed_python_pids(box.worker_marker) if host_status(p)["PPid"] == str(launcher)]
    assert len(pids) == 1, pids
    return pids[0]


# --- plumbing ---------------------------------------------------------------------------------------


def test_many_questions_in_a_row_share_one_jail_and_see_their_own_image(
    pool: SandboxPool, images: list[Path], tmp_path: Path
) -> None:
    launchers = set()
    for i, image in enumerate(images):
        with ask(pool, image, tmp_path, f"q{i}") as box:
            out = run_json(box, "print(json.dumps({'size': Image.open(image_path).size, 'path': image_path,"
                                " 'inbox': os.listdir('/mnt/data/input')}))")  # fmt: skip
            with Image.open(image) as im:
                assert out["size"] == list(im.size)
            assert out["path"] == box.image_path == "/mnt/data/input/" + image.name
            assert out["inbox"] == [image.name]
            assert_healthy(box)
            launchers.add(box.worker_pid)
    assert len(launchers) == 1 and pool.jails_started == 1


def test_steps_keep_variables_and_images_come_back(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path) as box:
        assert box.run("counter = 41\ndef bump(x):\n    return x + 1").ok
        res = box.run(
            "counter = bump(counter)\n"
            "image_path = '/path/that/does/not/exist.jpg'\n"
            "x1, y1, x2, y2 = 5, 5, 20, 20\n"
            "crop = Image.open(image_path).crop((x1, y1, x2, y2))\n"
            "crop.save('/mnt/data/temp_processed_images/zoom.png')\n"
            "print(counter, crop.size)\n"
        )
        assert res.ok, res.error
        assert res.stdout.strip() == "42 (64, 64)"  # the repairs ran: real path, literal box extended
        assert [p.name for p in res.images] == ["step2-zoom.png"]
        store.wait(res.images[0])  # compressed in the background
        with Image.open(res.images[0]) as im:
            assert im.format == "PNG" and im.size == (64, 64)
        assert box.run("print('nothing new')").images == []


def test_question_child_has_the_jails_identity_and_limits(
    pool: SandboxPool, images: list[Path], tmp_path: Path
) -> None:
    with ask(pool, images[0], tmp_path) as box:
        info = box.worker_info
        assert info["ids"] == [65534, 65534, 65534, 65534] and info["groups"] == []
        assert isinstance(info["status"], dict)
        assert int(info["status"]["CapEff"], 16) == 0 and int(info["status"]["CapPrm"], 16) == 0
        assert info["status"]["NoNewPrivs"] == "1" and info["status"]["Seccomp"] == "2"
        out = run_json(box, """
            import resource
            names = ['AS', 'CPU', 'NPROC', 'FSIZE', 'NOFILE', 'CORE']
            print(json.dumps({n: resource.getrlimit(getattr(resource, 'RLIMIT_' + n)) for n in names}))
            """)  # fmt: skip
        assert out["AS"] == [DEFAULTS.memory_mb * MiB] * 2
        assert out["CPU"] == [DEFAULTS.cpu_s] * 2  # set by the child itself: a fresh count per question
        assert out["NPROC"] == [DEFAULTS.nproc] * 2
        assert out["FSIZE"] == [DEFAULTS.file_size_mb * MiB] * 2
        assert out["NOFILE"] == [DEFAULTS.nofile] * 2 and out["CORE"] == [0, 0]
        expected_uid = "65534" if os.geteuid() == 0 else str(os.geteuid())
        for pid in jailed_python_pids(box.worker_marker):  # zygote and child, as the HOST sees them
            assert host_status(pid)["Uid"].split() == [expected_uid] * 4
        links = run_json(box, "print(json.dumps({f: os.readlink('/proc/self/fd/' + f)"
                              " for f in os.listdir('/proc/self/fd')"
                              " if os.path.exists('/proc/self/fd/' + f)}))")  # fmt: skip
        assert sum(str(v).startswith("socket:") for v in links.values()) == 1, links  # its own, not the zygote's


def test_timeout_restarts_the_child_not_the_jail(backend: str, images: list[Path], tmp_path: Path) -> None:
    with open_pool(backend, timeout_s=3) as pool, ask(pool, images[0], tmp_path) as box:
        assert isinstance(pool, SandboxPool)
        assert box.run("keep = 1\nopen('/tmp/mine', 'w').write('x')").ok
        launcher = box.worker_pid
        res = box.run("while True:\n    pass")
        assert res.timed_out and res.error == "timed out after 3 s"
        assert res.restarted and RESTART_NOTE in res.stderr
        after = box.run("print('keep' in globals(), os.path.exists('/tmp/mine'))")
        assert after.ok and after.stdout.strip() == "False False"  # as a fresh jail: state and files gone
        assert box.worker_pid == launcher and pool.jails_started == 1
        assert box.restarts == 1
        assert_alone(box)
        assert_healthy(box)


def test_child_death_is_reported_and_recovered(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path) as box:
        res = box.run("os.kill(os.getpid(), 9)")
        assert res.error == "the sandbox process died (exit status 137: killed by signal 9, e.g. a memory or CPU limit)"
        assert box.run("print('back')").stdout.strip() == "back"
        marker = box.worker_marker
        threaded = box.run(
            "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), os._exit(3))).start()"
        )
        assert threaded.ok
        polls = 300
        while len(jailed_python_pids(marker)) > 1 and polls:  # the child ends itself between steps
            polls -= 1
            threading.Event().wait(0.05)
        assert len(jailed_python_pids(marker)) == 1
        after = box.run("print('fresh')")
        assert after.ok and after.stdout.startswith("fresh") and after.restarted
    assert pool.jails_started == 1


def test_concurrent_questions_get_separate_jails(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    results: dict[int, object] = {}
    together = threading.Barrier(3, timeout=120)

    def one(i: int) -> None:
        with ask(pool, images[i], tmp_path, f"c{i}") as box:
            box.wait_ready()
            together.wait()  # all three hold a jail now
            results[i] = run_json(box, LIVE_PIDS + "print(json.dumps({'size': Image.open(image_path).size,"
                                  " 'inbox': os.listdir('/mnt/data/input'), 'pids': len(live_pids())}))")  # fmt: skip
            together.wait()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i in range(3):
        with Image.open(images[i]) as im:
            assert results[i] == {"size": list(im.size), "inbox": [images[i].name], "pids": 2}
    assert pool.jails_started == 3  # one question per jail at a time


def test_opting_out_and_the_unjailed_backend_use_one_sandbox_per_question(
    backend: str, images: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POOL_ENV, "0")
    with open_pool(backend) as pool:
        assert isinstance(pool, PerQuestionPool) and pool.reason == f"{POOL_ENV}=0"
        box = pool.open(image=images[0], images_dir=tmp_path / "images")
        assert type(box) is WorkerSandbox
        with box:
            assert_healthy(box)
    monkeypatch.delenv(POOL_ENV)
    with open_pool("none") as pool:
        assert isinstance(pool, PerQuestionPool)
        with pool.open(image=images[0], images_dir=tmp_path / "images-none") as box:
            assert box.backend == "none"


# --- isolation between questions --------------------------------------------------------------------


def test_variables_modules_and_random_state_do_not_leak(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    draws, pixels = [], []
    for i in range(2):
        with ask(pool, images[0], tmp_path, f"v{i}") as box:
            out = run_json(box, """
                import random, sys
                seen = {'secret': 'secret' in globals(), 'np_attr': hasattr(np, 'planted'),
                        'pixels': Image.MAX_IMAGE_PIXELS, 'module': 'planted_mod' in sys.modules,
                        'env': os.environ.get('PLANTED')}
                secret = 'from question A'
                np.planted = True
                Image.MAX_IMAGE_PIXELS = 7
                sys.modules['planted_mod'] = sys
                os.environ['PLANTED'] = '1'
                seen['draws'] = [float(np.random.rand()), random.random()]
                print(json.dumps(seen))
                """)  # fmt: skip
            draws.append(out.pop("draws"))
            pixels.append(out.pop("pixels"))
            assert out == {"secret": False, "np_attr": False, "module": False, "env": None}
    assert pixels[0] == pixels[1] != 7  # B sees Pillow's setting as the zygote has it, not A's
    assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]  # not the zygote's random state twice


DAEMONS = """
import signal, time, ctypes
def detach(then):
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            then()
        os._exit(0)
    os.waitpid(pid, 0)
def forever():
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    while True:
        time.sleep(1)
def stopped():
    os.kill(os.getpid(), signal.SIGSTOP)
    forever()
def subreaper():
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    if os.fork() == 0:
        forever()
    forever()
for fn in (forever, stopped, subreaper):
    detach(fn)
"""


def test_daemons_of_a_question_are_gone_for_the_next(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path, "a") as a:
        marker = a.worker_marker
        # The worker kills strays after each step, so plant them from a thread after the step ended.
        planted = a.run(
            LIVE_PIDS + "import threading\n"
            "def later():\n    time.sleep(0.5)\n    exec(" + repr(DAEMONS) + ", globals())\n"
            "threading.Thread(target=later, daemon=True).start()\n"
        )
        assert planted.ok, planted.error
        polls = 200
        while len(jailed_python_pids(marker)) < 6 and polls:  # zygote, A's worker, 4 daemons
            polls -= 1
            threading.Event().wait(0.05)
        assert len(jailed_python_pids(marker)) >= 6
    with ask(pool, images[1], tmp_path, "b") as b:
        assert_alone(b)
        assert b.worker_marker == marker  # the same jail ...
        assert len(jailed_python_pids(marker)) == 2  # ... holding only the zygote and B's child


def test_files_in_tmp_and_output_do_not_reach_the_next_question(
    pool: SandboxPool, images: list[Path], tmp_path: Path
) -> None:
    with ask(pool, images[0], tmp_path, "a") as a:
        res = a.run(textwrap.dedent("""
            import socket, stat
            for root in sorted({'/tmp', '/mnt/data/output', os.getcwd()}):
                os.makedirs(f'{root}/deep/er/est', exist_ok=True)
                open(f'{root}/deep/er/est/secret.txt', 'w').write('A was here')
                open(f'{root}/.hidden', 'w').write('A')
                os.symlink('/etc/passwd', f'{root}/link')
                os.mkfifo(f'{root}/fifo')
                s = socket.socket(socket.AF_UNIX); s.bind(f'{root}/sock'); s.listen(1)
                os.makedirs(f'{root}/locked/inner')
                open(f'{root}/locked/inner/x', 'w').write('x')
                os.chmod(f'{root}/locked/inner', 0)
                os.chmod(f'{root}/locked', 0o500)
            with open('/tmp/big', 'wb') as f:
                f.write(bytes(20 << 20))
            Image.new('RGB', (70, 70)).save('/mnt/data/temp_processed_images/a_result.png')
            print('planted')
            """))  # fmt: skip
        assert res.ok, res.error
    with ask(pool, images[1], tmp_path, "b") as b:
        out = run_json(b, """
            found = []
            for top in ('/tmp', '/mnt/data/output', '/mnt/data/input'):
                for root, dirs, files in os.walk(top):
                    found += [os.path.join(root, n) for n in dirs + files]
            free = {d: os.statvfs(d).f_bfree * os.statvfs(d).f_bsize for d in ('/tmp', '/mnt/data/output')}
            print(json.dumps({'found': sorted(found), 'free': free}))
            """)  # fmt: skip
        # (the output dir is the question's own folder, no per-step subfolder: nothing of A's is left)
        assert out["found"] == sorted(["/tmp/.thyme-stderr", "/tmp/.thyme-stdout", f"/mnt/data/input/{images[1].name}"])
        free = out["free"]
        assert isinstance(free, dict)
        assert free["/tmp"] > (DEFAULTS.tmp_mb - 1) * MiB and free["/mnt/data/output"] > (DEFAULTS.output_mb - 1) * MiB


def test_a_jail_that_cannot_be_cleaned_is_replaced(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path, "a") as a:
        deep = a.run(  # deeper than the zygote's RLIMIT_NOFILE lets it walk with one fd per level
            f"os.chdir('/tmp')\nfor _ in range({DEFAULTS.nofile + 50}):\n    os.mkdir('d')\n    os.chdir('d')\n"
            "open('secret.txt', 'w').write('A was here')\n"
        )
        assert deep.ok, deep.error
        first = a.worker_pid
    with ask(pool, images[1], tmp_path, "b") as b:
        out = run_json(b, "print(json.dumps(sorted(os.listdir('/tmp'))))")
        assert out == CAPTURE_FILES  # a jail whose clean-up failed is never handed out again
        assert b.worker_pid != first and pool.jails_started == 2


def test_no_question_can_reach_another_questions_image(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other.png"
    Image.new("RGB", (333, 222), (1, 2, 3)).save(other)
    other_digest = hashlib.sha256(other.read_bytes()).hexdigest()
    hunt = f"""
        import hashlib
        hits, listing, tried = [], {{}}, {{}}
        for root, dirs, files in os.walk('/', followlinks=False):
            if root == '/proc' or root.startswith('/proc/'):
                dirs[:] = []
                continue
            for n in files:
                p = os.path.join(root, n)
                try:
                    same_size = os.path.getsize(p) == {other.stat().st_size}
                    if same_size and hashlib.sha256(open(p, 'rb').read()).hexdigest() == {other_digest!r}:
                        hits.append(p)
                except OSError:
                    pass
        for d in ('/mnt/data/input', '/mnt/data', '/mnt'):
            listing[d] = sorted(os.listdir(d))
        for p in ['/mnt/data/input/other.png', STAGED]:
            try:
                open(p, 'rb').read(1)
                tried[p] = 'READ'
            except OSError as e:
                tried[p] = type(e).__name__
        print(json.dumps({{'hits': hits, 'listing': listing, 'tried': tried}}))
        """
    with ask(pool, images[0], tmp_path, "a") as a:
        b = ask(pool, other, tmp_path, "b")  # prefetched: opened (image staged) while A runs
        try:
            staged = str(b._stage.input_dir / b._stage.image_name)
            out = run_json(a, hunt.replace("STAGED", repr(staged)))
            assert out["hits"] == [] and "READ" not in json.dumps(out["tried"]), out
            assert out["listing"] == {"/mnt/data/input": [images[0].name], "/mnt/data": ["input", "output"],
                                      "/mnt": ["data"]}  # fmt: skip
            b.wait_ready()  # B now runs at the same time as A: in a jail of its own
            assert b.worker_pid != a.worker_pid
            again = run_json(a, hunt.replace("STAGED", repr(staged)))
            assert again["hits"] == [] and "READ" not in json.dumps(again["tried"]), again
            assert_alone(a)  # and A cannot see B's processes
            mine = run_json(b, "print(json.dumps({'size': Image.open(image_path).size}))")
            assert mine["size"] == [333, 222]
        finally:
            b.close()
    inbox = [j.stage.input_dir for j in pool.jails]
    assert all(list(d.iterdir()) == [] for d in inbox)  # every image left its jail with its question


# --- attacks on the shared jail -------------------------------------------------------------------


def test_signals_cannot_reach_the_zygote_or_the_host(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path, "a") as a:
        zygote = zygote_host_pid(a)
        launcher = a.worker_pid
        catchable = [int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]
        res = a.run(
            "import signal, time\n"
            "results = {}\n"
            f"for target in {{1, {os.getpid()}, {os.getppid()}, {zygote}}} - {{os.getpid()}}:\n"
            f"    for sig in [signal.SIGKILL, signal.SIGSTOP, *{catchable}]:\n"
            "        try:\n"
            "            os.kill(target, sig)\n"
            "            results[f'{target}/{sig}'] = 'sent'\n"
            "        except OSError as e:\n"
            "            results[f'{target}/{sig}'] = type(e).__name__\n"
            "time.sleep(0.3)\n"
            "print(json.dumps(sorted(set(results.values()))), os.getppid())\n"
        )
        assert res.ok, res.error
        assert res.stdout.split()[-1] == "1"  # our parent, the zygote, survived every signal
        # a forked child killing everything it can: takes this question's worker, never the zygote
        res = a.run("if os.fork() == 0:\n    os.kill(-1, 9)\n    os._exit(0)\nimport time\ntime.sleep(1)")
        assert res.error is not None and "died" in res.error and res.restarted
        assert_healthy(a)
        assert a.worker_pid == launcher and zygote_host_pid(a) == zygote
    assert os.getpid() > 0 and os.getppid() > 1  # the host is alive and not orphaned
    with ask(pool, images[1], tmp_path, "b") as b:
        assert_healthy(b)
        assert b.worker_pid == launcher and pool.jails_started == 1


def test_zygote_memory_and_fds_are_closed_to_questions(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path) as box:
        out = run_json(box, """
            import ctypes
            res = {}
            def attempt(label, fn):
                try:
                    fn()
                    res[label] = 'OK'
                except OSError as e:
                    res[label] = type(e).__name__
            attempt('mem', lambda: open('/proc/1/mem', 'rb').read(1))
            attempt('environ', lambda: open('/proc/1/environ', 'rb').read())
            attempt('maps', lambda: open('/proc/1/maps').read())
            attempt('fd', lambda: os.listdir('/proc/1/fd'))
            attempt('cwd', lambda: os.readlink('/proc/1/cwd'))
            attempt('root', lambda: os.listdir('/proc/1/root'))
            libc = ctypes.CDLL(None, use_errno=True)
            res['ptrace'] = [libc.ptrace(16, 1, 0, 0), ctypes.get_errno()]  # PTRACE_ATTACH
            buf = ctypes.create_string_buffer(8)
            local = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
            res['vm_readv'] = [libc.process_vm_readv(1, local, 1, local, 1, 0), ctypes.get_errno()]
            print(json.dumps(res))
            """)  # fmt: skip
        for key in ("mem", "environ", "maps", "fd", "cwd", "root"):
            assert out[key] == "PermissionError", (key, out)
        assert out["ptrace"] == [-1, 1] and out["vm_readv"] == [-1, 1]  # EPERM (seccomp)


def test_ipc_objects_that_would_outlive_a_question_are_refused(
    pool: SandboxPool, images: list[Path], tmp_path: Path
) -> None:
    with ask(pool, images[0], tmp_path) as box:
        out = run_json(box, """
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            IPC_CREAT = 0o1000
            res = {}
            res['shm'] = [libc.shmget(0x7468796d, 4096, IPC_CREAT | 0o666), ctypes.get_errno()]
            res['sem'] = [libc.semget(0x7468796d, 1, IPC_CREAT | 0o666), ctypes.get_errno()]
            res['msg'] = [libc.msgget(0x7468796d, IPC_CREAT | 0o666), ctypes.get_errno()]
            rt = ctypes.CDLL('librt.so.1', use_errno=True)
            res['mq'] = [rt.mq_open(b'/thyme', os.O_CREAT | os.O_RDWR, 0o666, None), ctypes.get_errno()]
            res['sysvipc'] = {k: open('/proc/sysvipc/' + k).read().count(chr(10)) for k in ('shm', 'sem', 'msg')}
            print(json.dumps(res))
            """)  # fmt: skip
        for key in ("shm", "sem", "msg", "mq"):
            assert out[key] == [-1, 1], (key, out)  # EPERM
        assert out["sysvipc"] == {"shm": 1, "sem": 1, "msg": 1}  # header lines only: nothing exists


def test_fork_and_memory_bombs_in_one_question_then_the_next_works(
    pool: SandboxPool, images: list[Path], tmp_path: Path
) -> None:
    with ask(pool, images[0], tmp_path, "a") as a:
        res = a.run(
            "import time\npids = []\ntry:\n    for i in range(100000):\n        pid = os.fork()\n"
            "        if pid == 0:\n            time.sleep(600)\n            os._exit(0)\n        pids.append(pid)\n"
            "finally:\n    print('forked', len(pids))\n"
        )
        assert res.error is not None and "BlockingIOError" in res.error, res.error
        assert 0 < int(res.stdout.split()[-1]) < DEFAULTS.nproc
        for code in ("b = bytearray(8 * 1024 ** 3)", "a = np.ones((40000, 40000, 3))"):
            bomb = a.run(code)
            assert bomb.error is not None and "MemoryError" in bomb.error
    with ask(pool, images[1], tmp_path, "b") as b:
        assert_alone(b)
        forks = b.run(
            "import time\npids = []\nfor _ in range(8):\n    pid = os.fork()\n    if pid == 0:\n"
            "        time.sleep(60)\n        os._exit(0)\n    pids.append(pid)\nprint(len(pids))"
        )
        assert forks.ok and forks.stdout.strip() == "8", forks.error  # A's sleepers no longer fill RLIMIT_NPROC
        assert_healthy(b)
    assert pool.jails_started == 1


def test_exponential_fork_bomb_times_out_and_the_pool_recovers(
    backend: str, images: list[Path], tmp_path: Path
) -> None:
    with open_pool(backend, timeout_s=3) as pool:
        assert isinstance(pool, SandboxPool)
        with ask(pool, images[0], tmp_path, "a") as a:
            res = a.run("while True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
            assert res.timed_out
            assert_alone(a)
            assert_healthy(a)
        with ask(pool, images[1], tmp_path, "b") as b:
            assert_alone(b)
            assert_healthy(b)


def test_a_dead_zygote_is_replaced_transparently(pool: SandboxPool, images: list[Path], tmp_path: Path) -> None:
    with ask(pool, images[0], tmp_path, "a") as a:
        assert a.run("keep = 1").ok
        old_marker = a.worker_marker
        old_pids = jailed_python_pids(old_marker)
        os.kill(zygote_host_pid(a), signal.SIGKILL)  # e.g. the kernel's OOM killer
        assert wait_until_gone(old_marker, known=old_pids) == []
        res = a.run("print('keep' in globals())")  # mid-question: the step gets a fresh child
        assert res.ok and res.stdout.strip() == "False" and res.restarted and RESTART_NOTE in res.stderr
        assert a.worker_marker != old_marker
        assert_healthy(a)
        marker = a.worker_marker
    old_pids = jailed_python_pids(marker)
    os.kill(zygote_host_pid_by_marker(marker), signal.SIGKILL)  # between questions
    assert wait_until_gone(marker, known=old_pids) == []
    with ask(pool, images[1], tmp_path, "b") as b:
        assert_healthy(b)
        assert_alone(b)
    assert pool.jails_started == 3


def zygote_host_pid_by_marker(marker: str) -> int:
    pids = jailed_python_pids(marker)
    ppids = {p: int(host_status(p)["PPid"]) for p in pids}
    roots = [p for p in pids if ppids[p] not in pids]
    assert len(roots) == 1, ppids
    return roots[0]


LAUNCHER = """
import sys
from pathlib import Path
from thyme_cli.sandbox.host.pool import open_pool
pool = open_pool(sys.argv[1], timeout_s=600)
sb = pool.open(image=Path(sys.argv[2]), images_dir=Path(sys.argv[3]))
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


def test_sigkilled_launcher_leaves_no_jailed_process(backend: str, images: list[Path], tmp_path: Path) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    proc = subprocess.Popen([sys.executable, str(script), backend, str(images[0]), str(tmp_path / "images")],
                            stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)  # fmt: skip
    try:
        assert proc.stdout is not None
        marker = proc.stdout.readline().strip()
        assert marker.startswith("thyme-worker:pool-")
        polls = 600
        while len(jailed_python_pids(marker)) < 3 and polls:  # zygote + question child + its daemon
            polls -= 1
            threading.Event().wait(0.05)
        assert len(jailed_python_pids(marker)) >= 3, "the step never started its daemon"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert wait_until_gone(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
