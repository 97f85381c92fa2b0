"""Weights by name (issue 19): resolved through torchvision's and timm's own tables, fetched from a
local HTTP server into a temporary TORCH_HOME, verified against the hash digits in the name, then
read with the server stopped. Nothing here touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import runpy
import socket
import sys
import threading
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import REPO, tiny_cfg

from resnext_det import ResNeXtSpec, make_resnext
from resnext_det.config import load_config
from resnext_det.weights import (
    PRESETS,
    CheckpointError,
    ResNeXtCheckpointer,
    WeightsUnavailableError,
    configure_for_weights,
    detectron2_to_torchvision,
    hub,
    load_pretrained,
    read_weights,
)
from resnext_det.weights.hub import MIRROR_ENV, resolve_name

X50_V1 = torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1
NAME = "torchvision://resnext50_32x4d.IMAGENET1K_V1"
# tiny_cfg's backbone (X-26-2x4d, stem 8, res2 16), so the file configures tiny_cfg.
SPEC = ResNeXtSpec(26, 2, 4, stem_out_channels=8, res2_out_channels=16)


class _Server:
    """http.server on 127.0.0.1 (random port) serving ``files``; ``cut`` paths announce their
    full length and close the connection halfway through."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's name for the GET handler
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in server.cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    s = _Server()
    yield s
    if s.thread.is_alive():
        s.stop()


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """A fresh TORCH_HOME (torch.hub reads it on every call) and no mirror."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    return home


def cache(home: Path) -> Path:
    return home / "hub" / "checkpoints"


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.is_dir() else []


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A torchvision-layout state_dict (of tiny_cfg's backbone) as bytes, its torchvision-style
    name (``resnext50_32x4d-<first 8 hex digits of its sha256>.pth``) and the torchvision
    state_dict."""
    torch.manual_seed(0)
    state = detectron2_to_torchvision(make_resnext(SPEC).state_dict())
    path = tmp_path_factory.mktemp("src") / "x.pth"
    torch.save(state, path)
    data = path.read_bytes()
    return data, f"resnext50_32x4d-{hashlib.sha256(data).hexdigest()[:8]}.pth", state


def point_enum_at(monkeypatch, url: str) -> None:
    """torchvision's own enum entry, with its URL on the local server (what a mirror would do)."""
    monkeypatch.setattr(X50_V1.value, "url", url)


def assert_loaded(model, state) -> None:
    got = detectron2_to_torchvision(model.state_dict())
    for key, value in state.items():
        if "num_batches" not in key and key in got:
            assert torch.equal(got[key], value), key


def test_first_load_downloads_into_torch_home_and_second_works_with_the_server_stopped(
    server, torch_home, tiny_file, monkeypatch
):
    data, name, state = tiny_file
    server.files[f"/models/{name}"] = data
    point_enum_at(monkeypatch, server.url(f"/models/{name}"))

    cache(torch_home).mkdir(parents=True)
    (cache(torch_home) / f".{name}.tmp-1-dead").write_bytes(b"half")  # a killed download's
    model = make_resnext(SPEC)
    report = load_pretrained(model, NAME)
    assert report.layout == "torchvision" and not report.missing
    assert_loaded(model, state)
    assert listing(cache(torch_home)) == [name]  # only the file: no temporary, no lock file
    assert (cache(torch_home) / name).read_bytes() == data
    assert server.requests == [f"/models/{name}"]

    server.stop()
    again = make_resnext(SPEC)
    load_pretrained(again, NAME)  # from the cache: the server is gone
    assert_loaded(again, state)
    assert server.requests == [f"/models/{name}"]


def test_content_not_matching_its_names_hash_is_refused_and_nothing_is_kept(
    server, torch_home, tiny_file, monkeypatch
):
    data, name, _ = tiny_file
    wrong = "resnext50_32x4d-0123abcd.pth"  # not the first hex digits of the content's sha256
    server.files[f"/models/{wrong}"] = data
    url = server.url(f"/models/{wrong}")
    point_enum_at(monkeypatch, url)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(
        CheckpointError, match=rf"{url}: its sha256 is {digest}, .*starts with 0123abcd"
    ):
        load_pretrained(make_resnext(SPEC), NAME)
    assert listing(cache(torch_home)) == []


@pytest.mark.parametrize("with_hash", [True, False])
def test_an_interrupted_download_leaves_no_partial_file(server, torch_home, tiny_file, with_hash):
    data, name, _ = tiny_file
    # without a hash in the name only the announced length can tell (torch.hub's own downloader
    # keeps such a file)
    path = f"/models/{name if with_hash else 'x50.pth'}"
    server.files[path] = data
    server.cut.add(path)
    with pytest.raises(
        WeightsUnavailableError, match=rf"closed after {len(data) // 2} of {len(data)} bytes"
    ):
        read_weights(server.url(path))
    assert listing(cache(torch_home)) == []


def test_plain_url_and_checkpointer_and_convert_tool_take_names(
    server, torch_home, tiny_file, monkeypatch, tmp_path, capsys
):
    data, name, state = tiny_file
    server.files[f"/{name}"] = data
    url = server.url(f"/{name}")
    point_enum_at(monkeypatch, url)

    model = make_resnext(SPEC)
    ResNeXtCheckpointer(model).resume_or_load(url, resume=False)  # MODEL.WEIGHTS: a URL
    assert_loaded(model, state)
    model = make_resnext(SPEC)
    ResNeXtCheckpointer(model).resume_or_load(NAME, resume=False)  # MODEL.WEIGHTS: a name
    assert_loaded(model, state)

    out = tmp_path / "converted.pkl"
    argv = sys.argv
    sys.argv = [str(REPO / "tools" / "convert_weights.py"), NAME, str(out)]
    try:
        with pytest.raises(SystemExit) as exit_info:
            runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert "torchvision's ResNeXt50_32X4D_Weights.IMAGENET1K_V1" in capsys.readouterr().out
    assert read_weights(out).conventions.cfg_values() == resolve_name(NAME).conventions.cfg_values()
    assert len(server.requests) == 1  # one download served all three


def test_named_conventions_come_from_the_enum_and_agree_with_the_file(
    torch_home, tiny_file, monkeypatch, tmp_path
):
    data, name, _ = tiny_file
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(data)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    point_enum_at(monkeypatch, f"http://127.0.0.1:9/models/{name}")  # never contacted

    transforms = X50_V1.transforms()
    named = resolve_name(NAME).conventions
    assert named.input_format == "RGB" and named.stride_in_1x1 is False
    assert named.pixel_mean == pytest.approx([255 * m for m in transforms.mean])
    assert named.pixel_std == pytest.approx([255 * s for s in transforms.std])

    cfg = tiny_cfg()
    configure_for_weights(cfg, NAME)  # found in the mirror folder, before any download
    from_file = read_weights(mirror / name).conventions  # the same file, read without its name
    assert from_file.cfg_values() == named.cfg_values()
    assert cfg.INPUT.FORMAT == "RGB" and cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False
    assert pytest.approx(list(named.pixel_mean)) == cfg.MODEL.PIXEL_MEAN
    assert pytest.approx(list(named.pixel_std)) == cfg.MODEL.PIXEL_STD
    assert listing(cache(torch_home)) == []  # the mirror's copy is used where it is


def test_every_configs_name_resolves_to_torchvisions_own_url(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("resolving a name must not download")

    monkeypatch.setattr(hub, "urlopen", no_network)
    configs = sorted((REPO / "configs").glob("*.yaml"))
    named = 0
    for path in configs:
        cfg = load_config(str(path))
        if not cfg.MODEL.WEIGHTS:
            continue
        if cfg.MODEL.WEIGHTS.startswith(("detectron2://ImageNetPretrained/", "catalog://")):
            # The Mask/Cascade/keypoint configs keep the zoo's FAIR/MSRA ImageNet files (and their
            # conventions; X-152's through detectron2's catalog), so that detectron2's own
            # checkpoints of those models load.
            continue
        assert cfg.MODEL.WEIGHTS.startswith("torchvision://"), (path.name, cfg.MODEL.WEIGHTS)
        model, _, tag = cfg.MODEL.WEIGHTS[len("torchvision://") :].partition(".")
        entry = torchvision.models.get_model_weights(model)[tag]
        source = resolve_name(cfg.MODEL.WEIGHTS)
        assert source.url == entry.url and source.url.startswith("https://download.pytorch.org/")
        assert source.hash_prefix and source.hash_prefix in os.path.basename(entry.url)
        # the V1 files the configs used by file name before
        assert tag == "IMAGENET1K_V1"
        # the config's conventions are the enum's, and what a torchvision file gives by itself
        conventions = source.conventions.cfg_values()
        assert conventions.keys() == PRESETS["torchvision"].cfg_values().keys()
        for key, value in PRESETS["torchvision"].cfg_values().items():
            assert conventions[key] == pytest.approx(value), key
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert node == pytest.approx(value), (path.name, key)
        named += 1
    assert named == 8  # the 7 Faster R-CNN ImageNet configs and RetinaNet X-50


def test_offline_an_uncached_name_says_url_cache_path_and_convert_command(torch_home, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/resnext50_32x4d-7cdf4587.pth"
    point_enum_at(monkeypatch, url)
    with pytest.raises(WeightsUnavailableError) as info:
        read_weights(NAME)
    message = str(info.value)
    assert f"cannot download {url}" in message
    assert str(cache(torch_home) / "resnext50_32x4d-7cdf4587.pth") in message
    # What a pip install has (issue 27), and advice for both config systems.
    assert "resnext-det convert resnext50_32x4d-7cdf4587.pth" in message
    assert "tools/" not in message and "train.init_checkpoint" in message
    assert MIRROR_ENV in message
    assert listing(cache(torch_home)) == []


def test_names_that_do_not_resolve_say_what_exists():
    with pytest.raises(
        ValueError, match=r"no 'IMAGENET1K_V9'; it has IMAGENET1K_V1, IMAGENET1K_V2"
    ):
        resolve_name("torchvision://resnext50_32x4d.IMAGENET1K_V9")
    with pytest.raises(ValueError, match=r"'resnet18' is not one of .*resnext50_32x4d"):
        resolve_name("torchvision://resnet18")  # BasicBlock: another network
    # no tag: torchvision's DEFAULT, as resnext50_32x4d(weights="DEFAULT")
    default = torchvision.models.ResNeXt50_32X4D_Weights.DEFAULT
    assert resolve_name("torchvision://resnext50_32x4d").url == default.url


def test_timm_names_use_timms_recorded_url_or_are_refused():
    timm = pytest.importorskip("timm")
    source = resolve_name("timm://resnext50_32x4d.tv_in1k")
    assert source.url == timm.models.get_pretrained_cfg("resnext50_32x4d.tv_in1k").url
    assert source.conventions.input_format == "RGB"
    with pytest.raises(ValueError, match="not a plain bottleneck ResNet/ResNeXt"):
        resolve_name("timm://resnet50d.ra2_in1k")
    without_url = [
        n for n in timm.list_pretrained("resnet50.*") if not timm.models.get_pretrained_cfg(n).url
    ]
    if without_url:
        with pytest.raises(ValueError, match="records no download URL"):
            resolve_name(f"timm://{without_url[0]}")


def test_a_cached_or_mirrored_file_is_checked_against_its_name_too(
    torch_home, tiny_file, monkeypatch, tmp_path
):
    data, name, _ = tiny_file
    url = f"http://127.0.0.1:9/models/{name}"  # never contacted: the file is found locally
    point_enum_at(monkeypatch, url)
    cache(torch_home).mkdir(parents=True)
    (cache(torch_home) / name).write_bytes(data[:-10])  # put there by hand, and cut short
    with pytest.raises(CheckpointError, match=rf"{name}' \(for {url}\) has sha256 .*Delete it"):
        read_weights(NAME)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(data[:-10])
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    with pytest.raises(CheckpointError, match=rf"mirror/{name}' \(for {url}\) has sha256"):
        read_weights(NAME)


def test_a_file_recording_other_conventions_than_its_name_is_refused(
    torch_home, tiny_file, monkeypatch, tmp_path
):
    _, _, state = tiny_file
    bgr = {"input_format": "BGR", "pixel_mean": [103.53, 116.28, 123.675], "pixel_std": [1, 1, 1]}
    path = tmp_path / "x.pth"
    torch.save({"model": state, "resnext_det": {"conventions": bgr}}, path)
    name = f"resnext50_32x4d-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pth"
    path.rename(tmp_path / name)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))
    point_enum_at(monkeypatch, f"http://127.0.0.1:9/{name}")
    with pytest.raises(CheckpointError, match=r"records .*'BGR'.* but torchvision://resnext50"):
        read_weights(NAME)


def test_hash_digits_are_read_as_torch_hub_names_them():
    def digits(url: str) -> str | None:
        return resolve_name(url).hash_prefix

    assert digits(X50_V1.url) == "7cdf4587"
    assert digits("https://example.org/a/resnet50_a1_0-14fe96d1.pth") == "14fe96d1"
    assert digits("https://example.org/my-model-1a2b3c4d.pth") == "1a2b3c4d"  # the last "-"
    assert digits("https://example.org/model_final.pth") is None  # nothing to check
    assert digits("https://example.org/my-face.pth") is None  # hex, but not 8+ digits


def test_detectron2_scheme_goes_through_detectron2s_path_manager(server, tmp_path, monkeypatch):
    """``detectron2://`` paths keep detectron2's own resolution (iopath's download and cache)."""
    from detectron2.utils.file_io import Detectron2Handler

    torch.manual_seed(1)
    state = detectron2_to_torchvision(make_resnext(SPEC).state_dict())
    path = tmp_path / "x.pth"
    torch.save(state, path)
    server.files["/detectron2/ImageNetPretrained/tiny/X-26.pth"] = path.read_bytes()
    monkeypatch.setattr(Detectron2Handler, "S3_DETECTRON2_PREFIX", server.url("/detectron2/"))
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "iopath_cache"))
    model = make_resnext(SPEC)
    load_pretrained(model, "detectron2://ImageNetPretrained/tiny/X-26.pth")
    assert_loaded(model, state)
    assert server.requests == ["/detectron2/ImageNetPretrained/tiny/X-26.pth"]


def test_two_urls_with_one_file_name_do_not_share_a_cached_file(server, torch_home, tmp_path):
    files = {}
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = detectron2_to_torchvision(make_resnext(SPEC).state_dict())
        torch.save(state, tmp_path / "x.pth")
        server.files[f"/run{seed}/model_final.pth"] = (tmp_path / "x.pth").read_bytes()
        files[seed] = state
    for seed, state in files.items():
        model = make_resnext(SPEC)
        load_pretrained(model, server.url(f"/run{seed}/model_final.pth"))
        assert_loaded(model, state)
    assert len(listing(cache(torch_home))) == 2
