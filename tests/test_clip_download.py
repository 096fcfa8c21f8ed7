"""Checkpoint and vocabulary downloads end to end against a local HTTP server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
from pathlib import Path

import pytest
import torch

import clip
from clip import cache as dl
from clip import loader, tokenizer as tok_module
from clip.model import random_model, tiny_config
from utils.errors import PECRError


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[bytes, str]] = {}

    def do_GET(self):
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, mode = self.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "cut":                          # announce the full length, send half, hang up
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    """(base_url, routes): serve ``routes[path] = (body, "ok" | "cut")``."""
    routes: dict[str, tuple[bytes, str]] = {}
    handler = type("Handler", (_Handler,), {"routes": routes})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tiny_checkpoint() -> tuple[bytes, str]:
    buffer = io.BytesIO()
    torch.save(random_model(tiny_config(), seed=7).state_dict(), buffer)
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_success_and_reuse(server, tmp_path):
    base, routes = server
    data = b"x" * (3 * dl.CHUNK + 17)
    sha = hashlib.sha256(data).hexdigest()
    routes[f"/models/{sha}/file.bin"] = (data, "ok")
    path = dl.download(f"{base}/models/{sha}/file.bin", tmp_path, progress=False)
    assert path == tmp_path / "file.bin" and path.read_bytes() == data and files_in(tmp_path) == ["file.bin"]
    routes.clear()                                 # a verified cached file needs no server
    assert dl.download(f"{base}/models/{sha}/file.bin", tmp_path, progress=False) == path


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    base, routes = server
    wrong = "0" * 64
    routes[f"/m/{wrong}/RN50.pt"] = (b"tampered", "ok")
    with pytest.raises(PECRError, match="SHA-256") as err:
        dl.download(f"{base}/m/{wrong}/RN50.pt", tmp_path / "cache", progress=False)
    assert str(tmp_path / "cache" / "RN50.pt") in str(err.value)
    assert files_in(tmp_path / "cache") == []


def test_interrupted_transfer_leaves_nothing(server, tmp_path):
    base, routes = server
    data = b"y" * 100_000
    sha = hashlib.sha256(data).hexdigest()
    routes[f"/m/{sha}/big.pt"] = (data, "cut")
    with pytest.raises(PECRError, match="interrupted"):
        dl.download(f"{base}/m/{sha}/big.pt", tmp_path, progress=False)
    assert files_in(tmp_path) == []


def test_corrupt_cached_file_is_replaced(server, tmp_path):
    base, routes = server
    data = b"good bytes"
    sha = hashlib.sha256(data).hexdigest()
    routes[f"/{sha}/f.pt"] = (data, "ok")
    (tmp_path / "f.pt").write_bytes(b"bad")
    with pytest.warns(UserWarning, match="SHA-256"):
        assert dl.download(f"{base}/{sha}/f.pt", tmp_path, progress=False).read_bytes() == data


def test_load_official_name_end_to_end(server, tmp_path, monkeypatch):
    base, routes = server
    data, sha = tiny_checkpoint()
    routes[f"/clip/models/{sha}/RN50.pt"] = (data, "ok")
    monkeypatch.setitem(loader.MODEL_URLS, "RN50", f"{base}/clip/models/{sha}/RN50.pt")
    monkeypatch.setenv("PECR_CLIP_ROOT", str(tmp_path / "env_root"))
    model = clip.load("RN50")                                          # default root: $PECR_CLIP_ROOT
    assert files_in(tmp_path / "env_root") == ["RN50.pt"]
    want = random_model(tiny_config(), seed=7)
    tokens = torch.tensor([[49406, 3772, 537, 23917, 49407] + [0] * 72])
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens), want.encode_text(tokens))
    clip.load("RN50", download_root=tmp_path / "explicit")               # explicit root beats the env
    assert files_in(tmp_path / "explicit") == ["RN50.pt"]


def test_offline_message(closed_port_url, tmp_path, monkeypatch):
    url = f"{closed_port_url}/clip/models/{'a' * 64}/ViT-B-16.pt"
    monkeypatch.setitem(loader.MODEL_URLS, "ViT-B/16", url)
    with pytest.raises(PECRError) as err:
        clip.load("ViT-B/16", download_root=tmp_path)
    message = str(err.value)
    assert "\n" not in message and url in message and str(tmp_path / "ViT-B-16.pt") in message
    assert "--clip-download-root" in message and "PECR_CLIP_ROOT" in message
    assert files_in(tmp_path) == []


def test_official_urls_carry_their_checksums():
    assert set(clip.available_models()) == {"RN50", "ViT-B/16"}
    assert dl.sha256_from_url(loader.MODEL_URLS["RN50"]).startswith("afeb0e10")
    assert dl.sha256_from_url(loader.MODEL_URLS["ViT-B/16"]).startswith("5806e77c")
    assert loader.MODEL_URLS["ViT-B/16"].endswith("/ViT-B-16.pt")


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("PECR_CLIP_ROOT", raising=False)
    assert dl.cache_root() == Path("~/.cache/clip").expanduser()
    monkeypatch.setenv("PECR_CLIP_ROOT", str(tmp_path / "env"))
    assert dl.cache_root() == tmp_path / "env"
    assert dl.cache_root(tmp_path / "arg") == tmp_path / "arg"


def test_vocabulary_download(server, clip_vocab, tmp_path, monkeypatch, closed_port_url):
    base, routes = server
    routes["/clip/bpe_simple_vocab_16e6.txt.gz"] = (clip_vocab.read_bytes(), "ok")
    monkeypatch.delenv(tok_module.VOCAB_ENV, raising=False)
    monkeypatch.setenv("PECR_CLIP_ROOT", str(tmp_path))
    monkeypatch.setattr(tok_module, "VOCAB_URL", f"{base}/clip/bpe_simple_vocab_16e6.txt.gz")
    path = tok_module.find_vocab()
    assert path == tmp_path / tok_module.VOCAB_NAME and path.read_bytes() == clip_vocab.read_bytes()
    # offline and nothing cached: the message names the URL, the target and the vocabulary options
    monkeypatch.setenv("PECR_CLIP_ROOT", str(tmp_path / "empty"))
    monkeypatch.setattr(tok_module, "VOCAB_URL", f"{closed_port_url}/bpe_simple_vocab_16e6.txt.gz")
    with pytest.raises(PECRError, match="--clip-vocab") as err:
        tok_module.find_vocab()
    assert str(tmp_path / "empty" / tok_module.VOCAB_NAME) in str(err.value)
