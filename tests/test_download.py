"""Downloads against a real HTTP server on 127.0.0.1 serving small generated files."""

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mnistlab import data
from mnistlab.data.download import fetch, sha256_hex
from mnistlab.data.idx import read_bytes
from mnistlab.errors import DataError

from .conftest import make_idx_folder


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files[path]; server.cut_once[path] = n sends the first response cut after n bytes."""

    def do_GET(self):
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.server.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut_once.pop(self.path, None)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.cut_once, httpd.requests = {}, {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny(tmp_path, server, monkeypatch):
    """A catalogued data set 'tiny' whose files live on the local server under /good/."""
    source = tmp_path / "source"
    make_idx_folder(source, n_train=40, n_test=10)
    sha256 = {}
    for path in source.iterdir():
        server.files[f"/good/{path.name}"] = path.read_bytes()
        sha256[path.name.removesuffix(".gz")] = sha256_hex(read_bytes(path))
    entry = data.Catalogued("tiny", "tiny test set", tuple("0123456789"), sha256, (f"{server.url}/good/",))
    monkeypatch.setitem(data.CATALOG, "tiny", entry)
    return entry


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_then_load(tmp_path, tiny, server):
    ds = data.load("tiny", tmp_path / "dl", validation_size=5, progress=False)
    assert ds.verified and ds.name == "tiny" and len(ds.split("train")[1]) == 35
    assert _leftovers(tmp_path / "dl") == sorted(f"{stem}.gz" for stem in data.FILES.values())
    served = server.files["/good/t10k-labels-idx1-ubyte.gz"]
    assert (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").read_bytes() == served
    # A second load finds the files and downloads nothing.
    server.requests.clear()
    data.load("tiny", tmp_path / "dl", validation_size=5, progress=False)
    assert server.requests == []


def test_first_mirror_down_falls_back_to_next(tmp_path, tiny, server, monkeypatch):
    dead = f"{server.url}/missing/"  # answers 404
    monkeypatch.setitem(data.CATALOG, "tiny", data.Catalogued(**{**vars(tiny), "mirrors": (dead, *tiny.mirrors)}))
    ds = data.load("tiny", tmp_path / "dl", validation_size=5, progress=False)
    assert ds.verified and all(path.startswith("/good/") for path in server.requests)


def test_wrong_bytes_fail_checksum_and_leave_nothing(tmp_path, tiny, server):
    name = "train-labels-idx1-ubyte.gz"
    server.files[f"/good/{name}"] = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(DataError) as err:
        fetch(name, tiny.mirrors, dest / name, tiny.sha256["train-labels-idx1-ubyte"], progress=False)
    assert "SHA-256 of decompressed bytes is" in str(err.value)
    assert tiny.sha256["train-labels-idx1-ubyte"] in str(err.value)
    assert _leftovers(dest) == []


def test_connection_cut_mid_file_leaves_nothing_and_retry_succeeds(tmp_path, tiny, server):
    name = "train-images-idx3-ubyte.gz"
    body = server.files[f"/good/{name}"]
    server.cut_once[f"/good/{name}"] = len(body) // 2
    dest = tmp_path / "dl"
    dest.mkdir()
    with pytest.raises(DataError, match="connection closed after"):
        fetch(name, tiny.mirrors, dest / name, tiny.sha256["train-images-idx3-ubyte"], progress=False)
    assert _leftovers(dest) == []
    fetch(name, tiny.mirrors, dest / name, tiny.sha256["train-images-idx3-ubyte"], progress=False)
    assert (dest / name).read_bytes() == body and _leftovers(dest) == [name]


def test_offline_error_says_where_to_put_the_files(tmp_path, tiny, monkeypatch):
    unreachable = "http://127.0.0.1:9/"  # the discard port: connection refused
    monkeypatch.setitem(data.CATALOG, "tiny", data.Catalogued(**{**vars(tiny), "mirrors": (unreachable,)}))
    with pytest.raises(DataError) as err:
        data.load("tiny", tmp_path / "dl", progress=False)
    message = str(err.value)
    assert "could not be downloaded" in message and str(tmp_path / "dl") in message
    assert "t10k-images-idx3-ubyte.gz" in message and "$MNISTLAB_DATA" in message
    assert _leftovers(tmp_path / "dl") == []
