"""Resource limits for one question's sandbox, with defaults sized for Thyme's image code.

Memory is RLIMIT_AS per process (no root or cgroups needed); tmpfs sizes are RAM it does not count,
so keep them modest.
"""

from __future__ import annotations

from dataclasses import dataclass

from thyme_cli.errors import UsageError

MiB = 1024 * 1024


def step_timeout(timeout_s: float) -> float:
    """The step timeout as given by the caller, checked: a non-positive one is a usage error."""
    if timeout_s <= 0:
        raise UsageError(f"sandbox timeout must be positive, got {timeout_s}")
    return float(timeout_s)


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. All are enforced inside the jail except the *_image_* and output caps,
    which the host applies when it reads results back."""

    memory_mb: int = 3072  # RLIMIT_AS of every jailed process
    cpu_s: int = 600  # RLIMIT_CPU of every jailed process, over the whole question
    nproc: int = 64  # RLIMIT_NPROC: processes AND threads of the jail's user
    file_size_mb: int = 64  # RLIMIT_FSIZE: largest single file
    nofile: int = 256  # RLIMIT_NOFILE
    output_mb: int = 128  # tmpfs holding the output directory (all steps)
    tmp_mb: int = 32  # tmpfs /tmp (scratch, matplotlib cache, captured fd output)
    inodes: int = 4096  # files per tmpfs (nsjail only: bwrap cannot set it)
    max_output_bytes: int = 16 * 1024  # stdout and stderr, each, per step
    max_image_bytes: int = 32 * MiB  # largest image file the host will read
    max_image_pixels: int = 50_000_000  # largest image the host will decode
    max_images: int = 8  # images picked up per step
    # What the images of a step / a question may add up to on the host: pixels decoded, bytes
    # stored (checked before decoding / writing; the rest is skipped with a note).
    step_image_pixels: int = 100_000_000
    step_image_bytes: int = 256 * MiB
    question_image_pixels: int = 400_000_000
    question_image_bytes: int = 1024 * MiB
    max_code_bytes: int = 1 * MiB  # largest code step accepted
    start_timeout_s: float = 60.0  # worker start (imports) on a loaded machine
    cv2_threads: int = 2  # OpenCV's thread pool (threads count against nproc)
    nice: int = 10  # scheduling priority below the model's threads (0 = as the host)

    def budget_text(self) -> str:
        """The image budgets in words (for the note when images are skipped)."""
        return (
            f"{self.step_image_pixels / 1e6:g} MP / {self.step_image_bytes / MiB:g} MB per step, "
            f"{self.question_image_pixels / 1e6:g} MP / {self.question_image_bytes / MiB:g} MB per question"
        )

    def rlimits(self, *, jailed: bool) -> dict[str, int]:
        """What the worker sets as hard limits on itself. Without a jail, RLIMIT_NPROC would count
        every process of the user, so it is left alone."""
        limits = {
            "AS": self.memory_mb * MiB,
            "CPU": self.cpu_s,
            "FSIZE": self.file_size_mb * MiB,
            "NOFILE": self.nofile,
            "CORE": 0,
        }
        if jailed:
            limits["NPROC"] = self.nproc
        return limits

    def validate(self) -> None:
        from thyme_cli.errors import UsageError

        for name in (
            "memory_mb",
            "cpu_s",
            "nproc",
            "file_size_mb",
            "nofile",
            "output_mb",
            "tmp_mb",
            "step_image_pixels",
            "step_image_bytes",
            "question_image_pixels",
            "question_image_bytes",
        ):
            if getattr(self, name) <= 0:
                raise UsageError(f"sandbox limit {name} must be positive, got {getattr(self, name)}")
        if self.memory_mb < 768:
            raise UsageError(
                f"sandbox memory limit of {self.memory_mb} MB is too small",
                hint="numpy, OpenCV and Pillow alone reserve about 500 MB of address space; use >= 768",
            )
