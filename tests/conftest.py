"""Shared fixtures: a tiny random CLIP saved to disk and loaded through t2l's own resolver."""

from __future__ import annotations

import json
import os

import pytest

# Tests share 2 cores; keep torch from oversubscribing and never reach the network.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["HF_HUB_OFFLINE"] = "1"

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_files(tmp_path_factory):
    """(config_json_path, weights_safetensors_path) of a tiny random open_clip CLIP (seed 0)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_clip")
    cfg_path = d / "tiny-clip.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CFG))
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=TINY_CLIP_CFG["embed_dim"],
        quick_gelu=True,
        vision_cfg=TINY_CLIP_CFG["vision_cfg"],
        text_cfg=TINY_CLIP_CFG["text_cfg"],
    )
    weights = d / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_path, weights


@pytest.fixture(scope="session")
def tiny_clip_args(tiny_clip_files):
    """CLI arguments that select the tiny CLIP."""
    cfg, weights = tiny_clip_files
    return ["--clip-model", str(cfg), "--clip-weights", str(weights), "--offline"]


@pytest.fixture
def online_hf_cache(monkeypatch, tmp_path):
    """Not offline (env and huggingface_hub's constant, read at its import) and an empty HF cache in tmp.

    Tests that must not reach the network cut it themselves.
    """
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "hf"


# ---- HF cache layout, network cut, a local HF hub, file-system faults (CLIP weights tests) ------


def _fake_hf_cache(root, repo: str, files: dict):
    """Lay files out like huggingface_hub does: blobs/, snapshots/<commit>/ symlinks, refs/main.

    Blobs are named by content (sha256), as the hub names LFS files; returns the snapshot folder.
    """
    import hashlib
    from pathlib import Path

    repo_dir = Path(root) / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    snap = repo_dir / "snapshots" / commit
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    for name, src in files.items():
        data = src if isinstance(src, bytes) else Path(src).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).unlink(missing_ok=True)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snap


@pytest.fixture
def fake_hf_cache():
    """fake_hf_cache(root, repo, {file name: path or bytes}) -> snapshot folder (HF cache layout)."""
    return _fake_hf_cache


@pytest.fixture
def no_network(monkeypatch):
    """Any DNS lookup or socket connect fails at once, like a machine without network."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled by test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def openai_hub_location():
    """(repo id, weights file name) where open_clip's pretrained table puts the default CLIP's
    weights, read from open_clip itself (not from t2l, so that t2l's reading of it is tested)."""
    import open_clip

    hub = open_clip.get_pretrained_cfg("ViT-B-32-quickgelu", "openai")["hf_hub"]
    assert hub.endswith("/"), hub  # "ORG/REPO/": open_clip's default file names apply
    return hub.rstrip("/"), open_clip.pretrained.HF_SAFE_WEIGHTS_NAME


@pytest.fixture
def tiny_as_default_model(monkeypatch):
    """open_clip's ViT-B-32-quickgelu config becomes the tiny CLIP's (its weights entry is untouched),
    so the real default tag resolves, downloads and then builds a model the tiny weights fit."""
    import copy

    import open_clip.factory

    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "ViT-B-32-quickgelu", copy.deepcopy(TINY_CLIP_CFG))


class HubServer:
    """A small HF-hub look-alike on 127.0.0.1 for huggingface_hub's real download code.

    Serves HEAD/GET /ORG/REPO/resolve/REV/FILE with the headers the hub sends (X-Repo-Commit, ETag,
    X-Linked-Etag/-Size for weights, Range requests). Faults, set by the test:
      status = 503        every request answers that code
      drop = n            the next n GETs send half the body, then the connection is closed
      refuse_after_drop   after a drop, every GET is closed before any answer (network gone)
      stall = True        GETs send half the body, then nothing (until release or 30 s)
      silent = True       requests are read and never answered (until release or 30 s)
      hold_gets_for_heads = n   a GET waits until n HEADs have arrived (at most 60 s)
      chunk_delay = s     the body goes out in 64 KB chunks, s seconds apart
    Every wait is bounded; at most MAX_REQUESTS requests are served (then 500s).
    """

    MAX_REQUESTS = 300
    MAX_WAIT_S = 30.0

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.status = None
        self.drop = 0
        self.refuse_after_drop = False
        self.stall = False
        self.silent = False
        self.hold_gets_for_heads = 0
        self.chunk_delay = 0.0
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._heads = threading.Condition(self._lock)
        self._dropped = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.MAX_WAIT_S  # an idle keep-alive connection is closed after this

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server._serve(self, body=False)

            def do_GET(self):
                server._serve(self, body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()

    def add(self, repo: str, filename: str, data: bytes) -> None:
        self.files[(repo, filename)] = data

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for m, _, _ in self.requests if method in (None, m))

    def close(self) -> None:
        self.release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    # -- one request --

    def _serve(self, h, body: bool) -> None:
        import hashlib
        import time
        from urllib.parse import unquote

        with self._lock:
            self.requests.append((h.command, h.path, h.headers.get("Range")))
            n = len(self.requests)
            if h.command == "HEAD":
                self._heads.notify_all()
        if n > self.MAX_REQUESTS:
            return self._reply(h, 500, {}, b"")
        if self.silent:
            self.release.wait(self.MAX_WAIT_S)
            h.close_connection = True
            return None
        if self.status:
            return self._reply(h, self.status, {"X-Error-Message": "test server fault"}, b"")
        parts = unquote(h.path.split("?", 1)[0]).lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._reply(h, 404, {}, b"")  # e.g. huggingface_hub's /api/agent-harnesses
        repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
        commit = hashlib.sha1(repo.encode()).hexdigest()
        if not any(r == repo for r, _ in self.files):
            return self._reply(h, 404, {"X-Error-Code": "RepoNotFound"}, b"")
        data = self.files.get((repo, filename))
        if data is None:
            return self._reply(h, 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b"")
        if filename.endswith(".json"):  # a small git file: etag = git blob sha1
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            headers = {"ETag": f'"{etag}"'}
        else:  # an LFS file: etag = sha256, size in X-Linked-Size
            etag = hashlib.sha256(data).hexdigest()
            headers = {"ETag": f'"{etag}"', "X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))}
        headers.update({"X-Repo-Commit": commit, "Accept-Ranges": "bytes"})
        headers["Content-Disposition"] = f'attachment; filename="{filename.rsplit("/", 1)[-1]}";'
        if not body:
            return self._reply(h, 200, headers, b"", length=len(data))
        with self._heads:
            if self._dropped and self.refuse_after_drop:
                h.close_connection = True
                return None  # closed without an answer
            deadline = time.monotonic() + 2 * self.MAX_WAIT_S
            while self.hold_gets_for_heads and self._count_heads() < self.hold_gets_for_heads:
                if not self._heads.wait(max(0.0, deadline - time.monotonic())):
                    break
        start = 0
        rng = h.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng[6:].split("-")[0].isdigit():
            start = int(rng[6:].split("-")[0])
        part = data[start:]
        status = 206 if start else 200
        if start:
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        cut = None
        with self._lock:
            if self.drop > 0:
                self.drop -= 1
                self._dropped = True
                cut = len(part) // 2
        if self.stall:
            cut = len(part) // 2
        self._reply(h, status, headers, part, cut=cut)

    def _count_heads(self) -> int:
        return sum(1 for m, _, _ in self.requests if m == "HEAD")

    def _reply(self, h, status, headers, body: bytes, length: int | None = None, cut: int | None = None):
        import time

        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        if not body:
            return
        end = len(body) if cut is None else cut
        step = 1 << 16
        try:
            for i in range(0, end, step):
                h.wfile.write(body[i : min(i + step, end)])
                if self.chunk_delay:
                    time.sleep(self.chunk_delay)
            h.wfile.flush()
            if cut is not None:
                if self.stall:
                    self.release.wait(self.MAX_WAIT_S)
                h.close_connection = True
                h.connection.shutdown(2)  # cut: the client sees the connection end mid-body
        except OSError:
            h.close_connection = True


@pytest.fixture
def hub_server(online_hf_cache, monkeypatch, tiny_clip_files, openai_hub_location):
    """A HubServer on 127.0.0.1 serving the tiny CLIP as the default CLIP's weights file (the real
    repo id and file name from open_clip's table); huggingface_hub (in this process via its
    constants, in child processes via HF_ENDPOINT) talks only to it. HF cache: online_hf_cache."""
    from huggingface_hub import constants

    server = HubServer()
    repo, filename = openai_hub_location
    server.add(repo, filename, tiny_clip_files[1].read_bytes())
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("HOME", str(online_hf_cache.parent / "home"))  # no ~/.cache/clip of the real user
    yield server
    server.close()


class FsFaults:
    """Simulated file-system faults below a folder, at the os/io calls huggingface_hub and t2l use."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch

    def read_only(self, root) -> None:
        """Like a read-only mount (works as root, unlike chmod): every write below `root` -> EROFS."""
        import builtins
        import errno
        import io
        import os

        root = os.path.abspath(root)

        def under(p) -> bool:
            try:
                return os.path.abspath(os.fspath(p)).startswith(root)
            except TypeError:
                return False

        def deny(p):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(p))

        def guard(fn, nargs=1):
            def wrapped(*args, **kwargs):
                if any(under(a) for a in args[:nargs]):
                    deny(next(a for a in args[:nargs] if under(a)))
                return fn(*args, **kwargs)

            return wrapped

        real_open, real_os_open = builtins.open, os.open

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and under(file):
                deny(file)
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
                deny(path)
            return real_os_open(path, flags, *args, **kwargs)

        self.mp.setattr(builtins, "open", open_)
        self.mp.setattr(io, "open", open_)
        self.mp.setattr(os, "open", os_open)
        for name, n in (
            ("mkdir", 1),
            ("rename", 2),
            ("replace", 2),
            ("symlink", 2),
            ("link", 2),
            ("unlink", 1),
        ):
            self.mp.setattr(os, name, guard(getattr(os, name), n))

    def disk_full(self, root, free_bytes: int) -> None:
        """Like a disk with `free_bytes` left: writes to files below `root` fail with ENOSPC beyond it."""
        import builtins
        import errno
        import io
        import os

        root = os.path.abspath(root)
        real_open = builtins.open
        state = {"left": free_bytes}

        class Full:
            def __init__(self, f):
                self._f = f

            def write(self, b):
                if len(b) > state["left"]:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                state["left"] -= len(b)
                return self._f.write(b)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

            def __getattr__(self, name):
                return getattr(self._f, name)

        def open_(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wax+") and os.path.abspath(os.fspath(file)).startswith(root):
                return Full(f)
            return f

        self.mp.setattr(builtins, "open", open_)
        self.mp.setattr(io, "open", open_)


@pytest.fixture
def fs_faults(monkeypatch):
    """fs_faults.read_only(folder) / fs_faults.disk_full(folder, free_bytes): simulated faults."""
    return FsFaults(monkeypatch)


# ---- video editing: a layered atlas whose mappings, alpha and flow are exact ---------------------


def _video_atlas(frames: int = 8, height: int = 72, width: int = 96, side: int = 24, layers: int = 2):
    """A camera panning 2 px/frame over a smooth random background and a textured side x side square
    moving 3 px/frame over it. uv are the atlas pixel coordinates themselves (uv_to_px (1, 0, 1, 0)),
    alpha is 1 on the square, and flow.npz is the exact motion (validity: the pixel stays in the frame
    and on the same layer). layers=1: the square is painted into the background (no fg layer)."""
    from fractions import Fraction

    import numpy as np
    import torch
    import torch.nn.functional as F

    from t2l.atlas.folder import AtlasData, AtlasLayer
    from t2l.video_read import VideoInfo

    T, H, W, S = frames, height, width, side
    pan, speed = 2, 3
    g = torch.Generator().manual_seed(1)
    bw, bh = W + pan * T + 8, H + 8
    bg = F.interpolate(torch.rand(1, 3, bh // 8, bw // 8, generator=g), size=(bh, bw), mode="bilinear")
    bg = (bg[0].permute(1, 2, 0).numpy() * 200).astype(np.uint8)  # bh, bw, 3
    fa = S + 8  # fg atlas side: the square at [4, 4 + S)
    obj = np.zeros((fa, fa, 3), np.uint8)
    yy0, xx0 = np.mgrid[0:S, 0:S]
    obj[4 : 4 + S, 4 : 4 + S] = np.stack([(xx0 * 9) % 255, (yy0 * 7) % 255, 255 - (xx0 * 5) % 255], -1)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    x0s = [4 + speed * t for t in range(T)]
    y0 = (H - S) // 2
    fr, uvb, uvf, al = [], [], [], []
    for t in range(T):
        f = bg[4 : 4 + H, pan * t + 4 : pan * t + 4 + W].copy()
        a = np.zeros((H, W), np.float32)
        a[y0 : y0 + S, x0s[t] : x0s[t] + S] = 1
        f[a > 0] = obj[4 : 4 + S, 4 : 4 + S].reshape(-1, 3)
        fr.append(f)
        uvb.append(np.stack([xs + pan * t + 4, ys + 4], -1))
        uvf.append(np.stack([xs - x0s[t] + 4, ys - y0 + 4], -1))
        al.append(a)
    alpha = np.stack(al)
    fwd = np.zeros((T - 1, H, W, 2), np.float32)
    fwd[..., 0] = np.where(alpha[:-1] > 0, speed, -pan)
    bwd = np.zeros((T - 1, H, W, 2), np.float32)
    bwd[..., 0] = np.where(alpha[1:] > 0, -speed, pan)

    def valid(flow, src, dst):
        tx = (xs[None] - 0.5 + flow[..., 0]).round().astype(int)
        inside = (tx >= 0) & (tx < W)
        txc = tx.clip(0, W - 1)
        same = np.take_along_axis(dst, txc, axis=2) == src
        return inside & same

    flow = {
        "forward": fwd.astype(np.float16),
        "backward": bwd.astype(np.float16),
        "forward_valid": valid(fwd, alpha[:-1], alpha[1:]),
        "backward_valid": valid(bwd, alpha[1:], alpha[:-1]),
    }
    frames_a = np.stack(fr)
    tex_bg = np.concatenate([bg, np.full((bh, bw, 1), 255, np.uint8)], -1)
    tex_fg = np.concatenate([obj, np.zeros((fa, fa, 1), np.uint8)], -1)
    tex_fg[4 : 4 + S, 4 : 4 + S, 3] = 255
    info = VideoInfo(
        "synthetic", W, H, Fraction(10), 0, tuple(t / 10 for t in range(T)), True, tuple(range(T))
    )
    lays = [AtlasLayer("bg", np.stack(uvb).astype(np.float32), tex_bg, (1.0, 0.0, 1.0, 0.0))]
    if layers == 2:
        lays.append(AtlasLayer("fg", np.stack(uvf).astype(np.float32), tex_fg, (1.0, 0.0, 1.0, 0.0)))
    return AtlasData(
        frames=frames_a, info=info, layers=lays, alpha=alpha if layers == 2 else None,
        reconstruction=frames_a.copy(), psnr=[50.0] * T, masks=alpha > 0.5 if layers == 2 else None,
        flow=flow, model_state=None, meta={"preset": "test"},
    )  # fmt: skip


@pytest.fixture(scope="session")
def make_video_atlas():
    """make_video_atlas(frames=8, height=72, width=96, side=24, layers=2) -> AtlasData (exact uv/alpha/flow)."""
    return _video_atlas


@pytest.fixture
def video_atlas_dir(tmp_path, make_video_atlas):
    """A saved two-layer synthetic atlas folder (8 frames of 96x72) in tmp_path/clip.atlas."""
    from t2l.atlas.folder import save_atlas

    d = tmp_path / "clip.atlas"
    save_atlas(d, make_video_atlas())
    return d


# ---- builders shared by several test modules (fixtures: test modules never import each other) -------


class SquareAtlas:
    """A 2-layer atlas of a square moving over a static background, with exact mappings: bg is static
    (uv = pixel), fg uv = pixel - motion. `build()` makes the AtlasData; the attributes say where
    everything is, so tests can check renders pixel by pixel.

    bg atlas: the H x W background, uv_to_px (32, 32, 32, 32) so uv in [-1, 1).
    fg atlas: 16x16, uv_to_px (1, 0, 1, 0) so uv is the atlas pixel coordinate itself.
    """

    T, H, W = 4, 48, 64
    SQ, PAD = 12, 2  # square side (frame px) and its margin inside the 16x16 fg atlas
    X0, Y0, VX, VY = 8, 10, 4, 2  # square's top-left in frame 0 and its motion per frame (px)
    RED = (255, 0, 0)

    def position(self, t: int) -> tuple[int, int]:
        return self.X0 + self.VX * t, self.Y0 + self.VY * t

    def build(self, scale: int = 1, source_path: str = "synthetic"):
        from fractions import Fraction

        import numpy as np

        from t2l.atlas.folder import AtlasData, AtlasLayer
        from t2l.video_read import VideoInfo

        T, H, W, SQ, PAD = self.T, self.H, self.W, self.SQ, self.PAD
        rng = np.random.default_rng(0)
        bg = rng.integers(0, 200, (H, W, 3), dtype=np.uint8)
        obj = np.zeros((16, 16, 3), np.uint8)
        obj[PAD : PAD + SQ, PAD : PAD + SQ] = rng.integers(100, 255, (SQ, SQ, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5  # pixel centres
        frames, uv_fg, alpha = [], [], []
        for t in range(T):
            x, y = self.position(t)
            f = bg.copy()
            f[y : y + SQ, x : x + SQ] = obj[PAD : PAD + SQ, PAD : PAD + SQ]
            frames.append(f)
            uv_fg.append(np.stack([xx - x + PAD, yy - y + PAD], -1))
            a = np.zeros((H, W), np.float32)
            a[y : y + SQ, x : x + SQ] = 1.0
            alpha.append(a)
        uv_bg = np.broadcast_to(np.stack([xx / 32 - 1, yy / 32 - 1], -1), (T, H, W, 2)).astype(np.float32)
        tex_bg = np.concatenate([bg, np.full((H, W, 1), 255, np.uint8)], -1)
        tex_fg = np.concatenate([obj, np.zeros((16, 16, 1), np.uint8)], -1)
        tex_fg[PAD : PAD + SQ, PAD : PAD + SQ, 3] = 255
        frames = np.stack(frames)
        info = VideoInfo(
            path=source_path,
            width=W * scale,
            height=H * scale,
            fps=Fraction(10),
            rotation=0,
            timestamps=tuple(t / 10 for t in range(T)),
            is_folder=True,
            frame_indices=tuple(range(T)),
        )
        return AtlasData(
            frames=frames,
            info=info,
            layers=[
                AtlasLayer("bg", uv_bg, tex_bg, (32, 32, 32, 32)),
                AtlasLayer("fg", np.stack(uv_fg).astype(np.float32), tex_fg, (1, 0, 1, 0)),
            ],
            alpha=np.stack(alpha),
            reconstruction=frames.copy(),
            psnr=[40.0 + t for t in range(T)],
            masks=np.stack(alpha) > 0.5,
            flow=None,
            model_state=None,
            meta={"preset": "test"},
        )

    def fg_patch_edit(self):
        """Transparent 16x16 fg edit with an opaque red 4x4 patch at atlas pixels [4, 8)."""
        import numpy as np

        e = np.zeros((16, 16, 4), np.uint8)
        e[..., :3] = (0, 255, 0)  # colour under alpha 0 must never show
        e[4:8, 4:8] = (*self.RED, 255)
        return e


@pytest.fixture
def square_atlas() -> SquareAtlas:
    """The moving-square atlas builder: square_atlas.build(), .position(t), .T/.H/.W, .fg_patch_edit()."""
    return SquareAtlas()


def _nla_mlp_state(inputs, outputs, layers, freqs, skips, width=32, seed=0):
    """State dict of NLA's IMLP written from the documented shapes only (hidden.{i}.weight/bias)."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    enc = 2 * inputs * freqs if freqs else inputs
    state = {}
    for i in range(layers):
        fan_in = enc if i == 0 else width + (enc if i in skips else 0)
        fan_out = outputs if i == layers - 1 else width
        state[f"hidden.{i}.weight"] = torch.randn(fan_out, fan_in, generator=g) / math.sqrt(fan_in)
        state[f"hidden.{i}.bias"] = torch.randn(fan_out, generator=g) * 0.1
    return state


def _write_nla_checkpoint(path, width=32) -> dict:
    """A random NLA checkpoint of the documented shapes and keys, saved to `path`; returns it."""
    import torch

    from t2l.atlas.nla import NLA_DEFAULTS

    keys = {"fg_mapping": "model_F_mapping1_state_dict", "bg_mapping": "model_F_mapping2_state_dict"}
    keys |= {"atlas": "F_atlas_state_dict", "alpha": "model_F_alpha_state_dict"}
    ckpt = {
        key: _nla_mlp_state(*NLA_DEFAULTS[name], width=width, seed=i)
        for i, (name, key) in enumerate(keys.items())
    }
    ckpt["iteration"] = 1234
    ckpt["optimizer_all_state_dict"] = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    torch.save(ckpt, path)
    return ckpt


@pytest.fixture
def nla_checkpoint():
    """write(path, width=32) -> dict: saves a random NLA checkpoint (documented shapes) to path."""
    return _write_nla_checkpoint


@pytest.fixture
def nla_mlp_state():
    """state(inputs, outputs, layers, freqs, skips, width=32, seed=0) -> one IMLP's random state dict."""
    return _nla_mlp_state


@pytest.fixture
def tiny_clip_cfg():
    """A fresh copy of the tiny CLIP's open_clip config (vision_cfg, text_cfg, ...)."""
    import copy

    return copy.deepcopy(TINY_CLIP_CFG)


@pytest.fixture(scope="session")
def examples_dir():
    """The repository's examples/ folder, wherever pytest is started from."""
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "examples"
