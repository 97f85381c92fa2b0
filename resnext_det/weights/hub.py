"""Weights by name: ``torchvision://``, ``timm://`` and ``http(s)://`` resolved to a verified file.

``torchvision://resnext50_32x4d.IMAGENET1K_V1`` is looked up in torchvision's own weights enum
(``ResNeXt50_32X4D_Weights.IMAGENET1K_V1``: its URL and the normalisation its transforms record),
``timm://resnext50_32x4d.a1h_in1k`` in timm's ``pretrained_cfg`` (when timm records a download URL
for it), and a plain URL is taken as it is. The file is then found, in this order:

1. in the folder ``$RESNEXT_DET_WEIGHTS_MIRROR`` (clusters without internet keep a copy there);
2. in torch's hub cache, ``torch.hub.get_dir()/checkpoints`` (``$TORCH_HOME/hub/checkpoints``),
   where ``torch.hub`` and torchvision put the same files, so one download serves both;
3. downloaded into that cache, with a progress bar, atomically (a temporary file in the cache
   folder renamed into place once complete and verified; an interrupted download leaves nothing).

Every file whose name carries hex digits after its last ``-`` (torchvision's
``resnext50_32x4d-7cdf4587.pth``, timm's ``resnet50_a1_0-14fe96d1.pth``) is checked as
``torch.hub``'s ``check_hash`` does: they must be the start of the file's sha256. A file that does
not match is refused and never kept. A file whose name carries no digits is at least checked to
be a checkpoint container (torch, safetensors, pickle) by its first bytes: an HTML error page
served as ``model.pth`` is refused when downloaded and never kept, and one already in the cache
is refused naming the file to delete. Without a network, a name whose file is not there fails with
the URL, the path to put the file at, and the command that converts it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import Request, urlopen

from ..errors import ResNeXtDetError
from ..io import TMP_MARK, atomic_write
from .io import CheckpointError, _container_of, sha256_of
from .records import Conventions

__all__ = [
    "MIRROR_ENV",
    "SCHEMES",
    "WeightsSource",
    "WeightsUnavailableError",
    "cache_dir",
    "fetch",
    "resolve_name",
    "resolve_weights_path",
]

logger = logging.getLogger(__name__)

MIRROR_ENV = "RESNEXT_DET_WEIGHTS_MIRROR"
SCHEMES = ("torchvision://", "timm://", "http://", "https://")

# torch.hub's convention: "name-<the first 8 or more hex digits of its sha256>.ext". The digits
# after the last "-" (torch.hub's HASH_REGEX takes the first "-<hex>.", the same in torchvision's
# and timm's names; the last one also reads "my-model-1a2b3c4d.pth" right).
_HASH = re.compile(r"-([0-9a-f]{8,})\.[^-]*$")
# The plain bottleneck ResNet/ResNeXt (7x7 stem, 1x1-conv shortcut): what ResNeXt here builds.
# BasicBlock ResNets (18/34) and timm's deep-stem/avg-down/SE variants are other networks.
_PLAIN = re.compile(r"^(resnet(26|50|101|152|200)|resnext\d+_\d+x\d+d|wide_resnet(50|101)_2)$")
_TIMEOUT_S = 60
_CHUNK = 1 << 20


class WeightsUnavailableError(ResNeXtDetError, OSError):
    """A named or remote weights file could not be fetched (no network, HTTP error, cut short)."""


class _BrokenOff(Exception):
    """Raised inside the atomic write (which would take an OSError for a failed write)."""


@dataclass(frozen=True)
class WeightsSource:
    """Where a weights name points: the URL, and the conventions its publisher records.

    Attributes:
        name: as given (``torchvision://resnext50_32x4d.IMAGENET1K_V1``, a URL).
        url: the download URL.
        description: who publishes it, e.g. ``torchvision's ResNeXt50_32X4D_Weights.IMAGENET1K_V1``.
        conventions: the input conventions recorded beside it (None for a plain URL).
    """

    name: str
    url: str
    description: str
    conventions: Conventions | None = None

    @property
    def file_name(self) -> str:
        return os.path.basename(urlparse(self.url).path)

    @property
    def hash_prefix(self) -> str | None:
        """The sha256 prefix the file name carries (torch.hub's convention), or None."""
        m = _HASH.search(self.file_name)
        return m[1] if m else None

    @property
    def cache_name(self) -> str:
        """Its name in the cache: the file's own where it carries a hash (torchvision's cache
        holds the same files), else prefixed by a digest of the URL, so that two URLs ending in
        ``model_final.pth`` never share a cached file."""
        if self.hash_prefix is not None:
            return self.file_name
        return f"{hashlib.sha256(self.url.encode()).hexdigest()[:12]}_{self.file_name}"


def cache_dir() -> Path:
    """torch's hub cache for weights files (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _conventions(mean: tuple[float, ...], std: tuple[float, ...], source: str) -> Conventions:
    # Both torchvision and timm feed RGB in [0, 1]; detectron2 feeds 0-255 pixels. Their
    # Bottleneck puts the stride in the 3x3 conv (torchvision's "ResNet V1.5"): STRIDE_IN_1X1 False.
    return Conventions(
        "RGB",
        tuple(round(float(v) * 255.0, 6) for v in mean),  # type: ignore[arg-type]
        tuple(round(float(v) * 255.0, 6) for v in std),  # type: ignore[arg-type]
        False,
        source=source,
    )


def _torchvision(name: str, given: str) -> WeightsSource:
    from torchvision.models import get_model_weights, list_models

    model, _, tag = name.partition(".")
    resnets = sorted(m for m in list_models() if _PLAIN.match(m))
    if not _PLAIN.match(model) or model not in resnets:
        raise ValueError(
            f"weights name {given!r}: {model!r} is not one of torchvision's bottleneck "
            f"ResNet/ResNeXt models ({', '.join(resnets)})"
        )
    enum = get_model_weights(model)
    tags = [w.name for w in enum]
    if tag and tag not in tags:
        raise ValueError(
            f"weights name {given!r}: torchvision's {enum.__name__} has no {tag!r}; it has "
            f"{', '.join(tags)} (DEFAULT is {enum.DEFAULT.name})"
        )
    weights = enum[tag] if tag else enum.DEFAULT
    transforms = weights.transforms()
    description = f"torchvision's {enum.__name__}.{weights.name}"
    conventions = _conventions(
        tuple(transforms.mean),
        tuple(transforms.std),
        f"{description} (RGB, mean {list(transforms.mean)}, std {list(transforms.std)} in 0-1 "
        f"units, stride in the 3x3)",
    )
    return WeightsSource(given, weights.url, description, conventions)


def _timm(name: str, given: str) -> WeightsSource:
    try:
        import timm
    except ImportError as exc:
        raise ValueError(f"weights name {given!r} needs timm: pip install timm") from exc
    architecture = name.partition(".")[0]
    if not _PLAIN.match(architecture):
        raise ValueError(
            f"weights name {given!r}: {architecture!r} is not a plain bottleneck ResNet/ResNeXt "
            f"(resnet50, resnext50_32x4d, ...); timm's deep-stem, avg-down, SE and BasicBlock "
            f"variants are other networks"
        )
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        known = timm.list_pretrained(f"{architecture}.*") or timm.list_pretrained(architecture)
        raise ValueError(
            f"weights name {given!r}: timm has no pretrained weights {name!r}; it has "
            f"{', '.join(known) or 'none for this architecture'}"
        )
    full = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if not cfg.url:
        raise ValueError(
            f"weights name {given!r}: timm records no download URL for {full} (only the Hugging "
            f"Face Hub repository {cfg.hf_hub_id!r}); download its file from there and give its "
            f"path, or name weights timm has a URL for"
        )
    description = f"timm's pretrained_cfg {full}"
    conventions = _conventions(
        tuple(cfg.mean),
        tuple(cfg.std),
        f"{description} (RGB, mean {list(cfg.mean)}, std {list(cfg.std)} in 0-1 units, "
        f"stride in the 3x3)",
    )
    return WeightsSource(given, cfg.url, description, conventions)


def resolve_name(path: str | os.PathLike) -> WeightsSource | None:
    """The source a weights name points at; None for a local path or another scheme.

    Looks names up in torchvision's and timm's tables only; downloads nothing.

    Raises:
        ValueError: an unknown model or tag (names what exists), or a timm name without a URL.
    """
    path = os.fspath(path)
    if path.startswith("torchvision://"):
        return _torchvision(path[len("torchvision://") :], path)
    if path.startswith("timm://"):
        return _timm(path[len("timm://") :], path)
    if path.startswith(("http://", "https://")):
        return WeightsSource(path, path, f"the URL {path}")
    return None


def _not_a_checkpoint(head: bytes) -> str | None:
    """What is wrong with a file that starts with ``head``, or None for a checkpoint container."""
    if not head:
        return "it is empty"
    if _container_of(head) != "unknown":
        return None
    return f"it is not a checkpoint (torch, safetensors or pickle): it starts with {head[:16]!r}"


def _check_file(path: Path, source: WeightsSource) -> None:
    """Refuse a cached or mirrored file whose content does not match its name's hash digits
    (or, without digits, that is not a checkpoint container)."""
    prefix = source.hash_prefix
    if prefix is None:
        with open(path, "rb") as f:
            wrong = _not_a_checkpoint(f.read(16))
        if wrong:
            raise CheckpointError(
                f"'{path}' (for {source.url}): {wrong}. Delete it; it is downloaded again "
                "(or put the right file there)"
            )
        return
    digest = sha256_of(path)  # remembered: configure_for_weights and the checkpointer both read it
    if not digest.startswith(prefix):
        raise CheckpointError(
            f"'{path}' (for {source.url}) has sha256 {digest}, but its name says it starts with "
            f"{prefix}: the file is corrupt or another file. Delete it; it is downloaded again "
            f"(or put the right file there)"
        )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache folder, so that the processes of one training
    download a file once; the lock lives on the folder itself, leaving no lock file behind."""
    try:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
    except (ImportError, OSError):  # Windows, or a folder that cannot be opened: no lock
        fd = None
    if fd is None:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # e.g. a filesystem without flock
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _unavailable(source: WeightsSource, dest: Path, why: str) -> WeightsUnavailableError:
    mirror = os.environ.get(MIRROR_ENV)
    mirror_note = (
        f"the mirror folder {MIRROR_ENV}={mirror!r} has no {source.file_name!r}"
        if mirror
        else f"{MIRROR_ENV} (a folder holding a copy) is not set"
    )
    stem = source.file_name.rsplit(".", 1)[0]
    return WeightsUnavailableError(
        f"cannot download {source.url} ({source.description}): {why}; {mirror_note}. Without "
        f"network access here, fetch that URL on another machine and put the file at "
        f"{dest} (or into the {MIRROR_ENV} folder), or convert it once and use the result: "
        f"resnext-det convert {source.file_name} {stem}-d2.pkl, then give {stem}-d2.pkl as the "
        f"weights (MODEL.WEIGHTS in a yacs config, train.init_checkpoint in a LazyConfig)"
    )


def _download(source: WeightsSource, dest: Path, progress: bool) -> None:
    """Download ``source.url`` to ``dest`` atomically, checking its length and hash.

    Not ``torch.hub.download_url_to_file``: it keeps a body cut short by the server when the name
    carries no hash (http.client's ``read(n)`` returns ``b""`` at an early close), and names
    neither the URL nor the cache path in its errors.
    """
    from tqdm import tqdm

    url = source.url
    try:
        response = urlopen(Request(url, headers={"User-Agent": "resnext_det"}), timeout=_TIMEOUT_S)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, HTTPError, timeout
        raise _unavailable(source, dest, f"{type(exc).__name__}: {exc}") from exc
    length = response.headers.get("Content-Length")
    total = int(length) if length and length.isdigit() else None
    digest = hashlib.sha256()

    def write(f) -> None:  # f: the temporary file atomic_write opens
        received = 0
        head = b""
        with tqdm(
            total=total,
            disable=not progress,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=source.file_name,
        ) as bar:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _BrokenOff(
                        f"the download broke off after {received} bytes ({exc})"
                    ) from exc
                if not chunk:
                    break
                f.write(chunk)
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise _BrokenOff(
                f"the connection closed after {received} of {total} bytes (nothing was kept)"
            )
        prefix = source.hash_prefix
        wrong = _not_a_checkpoint(head) if prefix is None else None
        if wrong:
            raise CheckpointError(
                f"downloaded {url}: {wrong}. Refused; nothing was kept in {dest.parent} (a "
                "server's error page, or a URL that is not the weights file)"
            )
        if prefix is not None and not digest.hexdigest().startswith(prefix):
            raise CheckpointError(
                f"downloaded {url}: its sha256 is {digest.hexdigest()}, but its name says it "
                f"starts with {prefix}. Refused; nothing was kept in {dest.parent} (a corrupted "
                f"transfer, or the server holds another file under this name)"
            )

    logger.info("Downloading %s (%s) to %s", url, source.description, dest)
    try:
        with response:
            atomic_write(dest, write)
    except _BrokenOff as exc:
        raise _unavailable(source, dest, str(exc)) from exc.__cause__
    if source.hash_prefix is None:
        logger.warning("%s carries no hash in its name: its content was not verified", url)


def fetch(source: WeightsSource, *, progress: bool = True) -> str:
    """The local file for ``source``: the mirror's, the cached one, or a fresh download.

    Raises:
        WeightsUnavailableError: not in the mirror or cache, and the download failed (offline, HTTP
            error, cut short): names the URL, where to put the file, and the convert command.
        CheckpointError: the file's sha256 does not match its name (a download is not kept).
    """
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        candidate = Path(mirror).expanduser() / source.file_name
        if candidate.is_file():
            _check_file(candidate, source)
            return str(candidate)
    dest = cache_dir() / source.cache_name
    if not dest.is_file():
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WeightsUnavailableError(
                f"cannot create torch's hub cache {dest.parent} for {source.url} ({exc}): set "
                f"TORCH_HOME to a writable folder, or {MIRROR_ENV} to a folder holding "
                f"{source.file_name}"
            ) from exc
        with _locked(dest.parent):
            if not dest.is_file():  # another process may have fetched it while we waited
                # A download killed outright (SIGKILL, power loss) leaves its temporary file;
                # under the lock no one else is writing one for this name.
                for stale in dest.parent.glob(f".{glob.escape(dest.name)}{TMP_MARK}*"):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                _download(source, dest, progress)
    _check_file(dest, source)
    return str(dest)


def resolve_weights_path(path: str | os.PathLike, *, progress: bool = True) -> str:
    """A local path for any weights path: names and URLs fetched (see :func:`fetch`), other
    ``scheme://`` paths (``detectron2://``) through detectron2's ``PathManager``, local paths as
    they are."""
    path = os.fspath(path)
    source = resolve_name(path)
    if source is not None:
        return fetch(source, progress=progress)
    if "://" in path:
        from detectron2.utils.file_io import PathManager

        return PathManager.get_local_path(path)
    return path
