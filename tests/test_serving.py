"""The digit reader: MNIST-style preprocessing, `mnistlab predict`, the JSON API, ONNX export, and the
drawing page in a real browser."""

import base64
import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mnistlab import api
from mnistlab.cli import main
from mnistlab.serving.images import FRAME, ImageError, read, to_mnist
from mnistlab.serving.photos import photo
from mnistlab.serving.predictor import Predictor

from .helpers import naive
from .test_report import ARTIFACTS


@pytest.fixture(scope="module")
def model(tmp_path_factory, mnist_dir) -> Path:
    """The final model's architecture, trained briefly (lr 1e-3, batch 128, 2 epochs): about 97% on test."""
    out = tmp_path_factory.mktemp("reader") / "final"
    overrides = ["train.learning_rate=1e-3", "train.batch_size=128"]
    api.run("final", set=overrides, epochs=2, compile=False, data_dir=mnist_dir, out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def digits(mnist):
    x, y = mnist.split("test")
    return x.numpy().reshape(-1, 28, 28), y.numpy()


def _page(digit: np.ndarray, side: int = 200, offset=(0, 0), scale: float = 0.5) -> Image.Image:
    """A digit drawn dark on white paper, `scale` of the page's side, moved by `offset` pixels."""
    size = int(side * scale)
    ink = Image.fromarray((digit * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    page = np.zeros((side, side), np.float32)
    top, left = (side - size) // 2 + offset[0], (side - size) // 2 + offset[1]
    page[top : top + size, left : left + size] = np.asarray(ink) / 255
    return Image.fromarray((255 * (1 - page)).astype(np.uint8))


# --- preprocessing ---------------------------------------------------------------------------------


def test_mnist_digits_come_through_unchanged_in_shape_and_centre(digits):
    x, _ = digits
    alike = []
    for digit in x[:50]:
        prepared = to_mnist(digit)
        assert not prepared.inverted and prepared.pixels.shape == (FRAME, FRAME)
        rows, cols = np.nonzero(prepared.pixels)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 in (20, 21)  # a 20-pixel box, and a pixel of resampling's ringing
        assert np.allclose(ndimage.center_of_mass(prepared.pixels), (14, 14), atol=0.5)
        alike.append(np.corrcoef(prepared.pixels.ravel(), digit.ravel())[0, 1])
    # Faint edges fall below the ink floor and the box is drawn again: alike, not equal.
    assert np.mean(alike) > 0.85 and min(alike) > 0.6


def test_small_off_centre_dark_on_light_digits_are_made_like_mnist(digits):
    x, _ = digits
    centred = to_mnist(np.asarray(_page(x[0]), np.float32) / 255)
    moved = to_mnist(np.asarray(_page(x[0], side=600, offset=(-200, 170), scale=0.15), np.float32) / 255)
    assert centred.inverted and moved.inverted
    assert np.corrcoef(centred.pixels.ravel(), moved.pixels.ravel())[0, 1] > 0.9
    assert np.corrcoef(centred.pixels.ravel(), to_mnist(x[0]).pixels.ravel())[0, 1] > 0.85


def test_an_empty_canvas_has_no_digit():
    assert to_mnist(np.ones((280, 280), np.float32)).pixels is None
    assert to_mnist(np.zeros((28, 28), np.float32)).pixels is None
    speckled = np.clip(0.95 + np.random.default_rng(0).normal(0, 0.02, (280, 280)), 0, 1).astype(np.float32)
    assert to_mnist(speckled).pixels is None


def test_unreadable_images_are_refused(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        read(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ImageError, match="notes.png: not an image that Pillow can read"):
        read(tmp_path / "notes.png")
    # A PNG whose header claims 50,000 x 50,000 pixels: refused from the header, nothing decoded.
    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, "PNG")
    header = bytearray(bomb.getvalue())
    header[16:24] = (50_000).to_bytes(4, "big") * 2
    with pytest.raises(ImageError, match="pixels is over the limit|not an image"):
        read(bytes(header), "bomb.png")


# --- the command line -------------------------------------------------------------------------------


def test_predict_reads_every_image_format(model, digits, tmp_path, capsys):
    x, y = digits
    files = []
    for index, suffix in zip(range(5), (".png", ".jpg", ".bmp", ".gif", ".webp"), strict=True):
        path = tmp_path / f"digit-{index}{suffix}"
        _page(x[index]).convert("RGB" if suffix == ".jpg" else "L").save(path)
        files.append(path)
    blank = tmp_path / "blank.png"
    Image.new("L", (100, 100), 255).save(blank)
    assert main(["predict", str(model), *map(str, files), str(blank), "--json", "--top", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines[:5]] == [str(label) for label in y[:5]]
    assert all(len(line["top"]) == 2 and len(line["probabilities"]) == 10 for line in lines[:5])
    assert lines[5]["empty"] and lines[5]["label"] is None and lines[5]["file"] == str(blank)
    assert main(["predict", str(model), str(files[0])]) == 0
    assert capsys.readouterr().out.startswith(f"{files[0]}: {y[0]} (")


def test_predict_errors_are_one_line(model, tmp_path, capsys):
    image = tmp_path / "d.png"
    Image.new("L", (50, 50), 255).save(image)
    (tmp_path / "text.png").write_text("hello")
    broken = tmp_path / "broken"
    shutil.copytree(model, broken)
    described = json.loads((broken / "model.json").read_text())
    described["architecture"]["hidden"] = [64]
    (broken / "model.json").write_text(json.dumps(described))
    cases = [
        ([str(model), str(tmp_path / "missing.png")], "missing.png: no such file"),
        ([str(model), str(tmp_path / "text.png")], "text.png: not an image"),
        ([str(tmp_path), str(image)], "no model.safetensors"),
        ([str(broken), str(image)], "model.json does not match model.safetensors"),
        (["--onnx", str(tmp_path / "text.png"), str(image)], "not an ONNX file"),
    ]
    for args, message in cases:
        assert main(["predict", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("mnistlab: error: ") and message in err and "\n" not in err, err


def test_a_multi_seed_folder_votes(model, tmp_path, digits):
    x, _ = digits
    for seed in (0, 1):
        shutil.copytree(model, tmp_path / "both" / f"seed-{seed}")
    alone, both = Predictor(model), Predictor(tmp_path / "both")
    assert both.seeds == 2
    np.testing.assert_allclose(both.probabilities(x[:100]), alone.probabilities(x[:100]), rtol=1e-5, atol=1e-7)


def test_photo_like_digits_are_read_as_well_as_mnist_and_far_better_than_a_naive_resize(model, digits):
    x, y = digits
    reader, rng = Predictor(model), np.random.default_rng(0)
    photos = [read(photo(x[i], rng), "photo") for i in range(1000)]
    ours = np.mean([p.label == str(y[i]) for i, p in enumerate(reader.predict([to_mnist(g) for g in photos]))])
    clean = np.mean(reader.probabilities(x[:1000]).argmax(1) == y[:1000])
    resized = np.mean(reader.probabilities(np.stack([naive(g) for g in photos])).argmax(1) == y[:1000])
    print(f"1,000 photo-like test digits: {ours:.1%} (MNIST itself {clean:.1%}), naive resize {resized:.1%}")
    assert ours >= clean - 0.02 and resized < 0.5


# --- the API ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(model):
    from fastapi.testclient import TestClient

    from mnistlab.serving.server import create_app

    with TestClient(create_app(Predictor(model), "test model")) as client:
        yield client


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def test_api_reads_a_real_test_digit(client, digits):
    x, y = digits
    answer = client.post("/api/predict", files={"image": ("d.png", _png(_page(x[1])), "image/png")})
    assert answer.status_code == 200
    body = answer.json()
    assert body["label"] == str(y[1]) and not body["empty"] and len(body["image"]) == 28
    assert abs(sum(body["probabilities"]) - 1) < 1e-4
    by_pixels = client.post("/api/predict", json={"pixels": x[1].ravel().tolist()}).json()
    assert by_pixels["label"] == str(y[1])
    assert client.post("/api/predict", json=[0.0] * 784).json()["empty"]
    assert client.get("/healthz").json()["status"] == "ok"
    assert "/api/predict" in client.get("/openapi.json").json()["paths"]
    assert "<canvas" in client.get("/").text


def test_api_refuses_bad_requests_and_goes_on_serving(client, digits):
    x, y = digits
    huge = client.post("/api/predict", files={"image": ("big.png", b"\0" * (2 << 20), "image/png")})
    assert huge.status_code == 413 and "over" in huge.json()["error"]
    not_image = client.post("/api/predict", files={"image": ("x.png", b"plain text", "image/png")})
    assert not_image.status_code == 400 and "not an image" in not_image.json()["error"]
    malformed = client.post("/api/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 422 and malformed.json()["error"] == "malformed JSON"
    short = client.post("/api/predict", json={"pixels": [0.5] * 100})
    assert short.status_code == 400 and "expected 784 pixels, got 100" in short.json()["error"]
    assert client.post("/api/predict", json={"pixels": ["a"] * 784}).status_code == 400
    assert client.post("/api/predict", json={"pixels": x[2].ravel().tolist()}).json()["label"] == str(y[2])


def test_api_answers_20_concurrent_requests(client, model, digits):
    x, y = digits
    bodies = [_png(_page(x[i])) for i in range(20)]

    def ask(i):
        return client.post("/api/predict", files={"image": (f"{i}.png", bodies[i], "image/png")}).json()["label"]

    with ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(ask, range(20)))
    one_by_one = [p.label for p in Predictor(model).predict([to_mnist(read(b)) for b in bodies])]
    assert labels == one_by_one and sum(label == str(v) for label, v in zip(labels, y, strict=False)) >= 18


# --- ONNX -----------------------------------------------------------------------------------------------


def test_onnx_export_agrees_with_pytorch_on_1000_test_digits(model, digits, tmp_path, capsys):
    from mnistlab.serving.onnx import OnnxPredictor

    x, _ = digits
    assert main(["export", str(model), "--onnx", str(tmp_path / "reader.onnx")]) == 0
    torch_probabilities = Predictor(model).probabilities(x[:1000])
    onnx_reader = OnnxPredictor(tmp_path / "reader.onnx")
    onnx_probabilities = onnx_reader.probabilities(x[:1000])
    assert np.array_equal(onnx_probabilities.argmax(1), torch_probabilities.argmax(1))
    assert np.abs(onnx_probabilities - torch_probabilities).max() < 1e-5
    assert onnx_reader.classes == [str(c) for c in range(10)] and 0 < onnx_reader.threshold < 1
    # predict --onnx runs without torch.
    image = tmp_path / "d.png"
    _page(x[0]).save(image)
    code = (
        "import sys; from mnistlab.cli import main; "
        f"code = main(['predict', '--onnx', {str(tmp_path / 'reader.onnx')!r}, {str(image)!r}]); "
        "print('torch loaded' if 'torch' in sys.modules else 'no torch'); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "no torch", result.stderr
    assert result.stdout.startswith(f"{image}: 7 (")


# --- the page in a browser --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_drawing_page_reads_a_digit_drawn_with_the_mouse(model, digits, tmp_path):
    from playwright.sync_api import sync_playwright

    from .test_report import _chromium

    chromium = _chromium()
    x, y = digits
    with _serving(model) as base:
        flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=flags)
            page = browser.new_page()
            page.goto(base)
            pad = page.locator("#pad").bounding_box()
            # Trace a real test digit: a stroke along each row of its ink, ten screen pixels per pixel.
            index = 3
            digit = x[index]
            for row in range(28):
                ink = np.nonzero(digit[row] > 0.5)[0]
                for start, stop in _runs(ink):
                    page.mouse.move(float(pad["x"] + 10 * start + 5), float(pad["y"] + 10 * row + 5))
                    page.mouse.down()
                    page.mouse.move(float(pad["x"] + 10 * stop + 5), float(pad["y"] + 10 * row + 5), steps=2)
                    page.mouse.up()
            page.wait_for_function("document.getElementById('bars').children.length === 10")
            page.wait_for_timeout(500)  # the last drawing's answer
            shown = page.locator("#label").text_content()
            drawn = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
            browser.close()
    assert shown == str(y[index])
    # The command line reads the same picture the same way.
    picture = tmp_path / "drawn.png"
    picture.write_bytes(base64.b64decode(drawn.split(",", 1)[1]))
    assert Predictor(model).predict_files([picture])[0].label == shown


def _runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive column indices as (first, last) pairs."""
    runs = []
    for column in columns:
        if runs and column == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], column)
        else:
            runs.append((column, column))
    return runs


@pytest.mark.slow
def test_the_final_presets_model_reads_photo_like_digits_at_97_percent(tmp_path, mnist_dir, digits):
    x, y = digits
    (run,) = api.run("final", data_dir=mnist_dir, out=tmp_path / "final").seed_runs
    reader, rng = Predictor(run.folder.path), np.random.default_rng(0)
    predictions = reader.predict([to_mnist(read(photo(x[i], rng), "photo")) for i in range(1000)])
    assert np.mean([p.label == str(y[i]) for i, p in enumerate(predictions)]) >= 0.97


# --- pictures as people send them ---------------------------------------------------------------------


def test_a_phone_photo_is_read_upright_as_its_exif_orientation_says(model, digits, tmp_path):
    x, y = digits
    upright = _page(x[3])
    sideways = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view": the sensor's pixels lie sideways
    upright.rotate(90, expand=True).convert("RGB").save(sideways, exif=exif.tobytes(), quality=95)
    (reading,) = Predictor(model).predict_files([sideways])
    (plain,) = Predictor(model).predict([to_mnist(np.asarray(upright, np.float32) / 255)])
    assert reading.label == plain.label == str(y[3])


@pytest.mark.parametrize("ink", [0, 255])
def test_ink_on_a_transparent_background_reads_as_on_paper(model, digits, tmp_path, ink):
    x, y = digits
    alpha = np.asarray(_page(x[4]).convert("L"))  # dark ink: 0 on the page; make ink opaque, page clear
    rgba = np.zeros((*alpha.shape, 4), np.uint8)
    rgba[..., :3] = ink
    rgba[..., 3] = 255 - alpha
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba, "RGBA").save(path)
    (reading,) = Predictor(model).predict_files([path])
    assert not reading.empty and reading.label == str(y[4])


def test_predict_json_leaves_out_the_image_unless_asked(model, digits, tmp_path, capsys):
    path = tmp_path / "d.png"
    _page(digits[0][0]).save(path)
    assert main(["predict", str(model), str(path), "--json"]) == 0
    assert "image" not in json.loads(capsys.readouterr().out)
    assert main(["predict", str(model), str(path), "--json", "--with-image"]) == 0
    image = json.loads(capsys.readouterr().out)["image"]
    assert len(image) == 28 and all(len(row) == 28 for row in image)


def test_api_refuses_nan_pixels_and_json_nested_to_exhaust_a_parser(client):
    pixels = [0.0] * 783
    for body in (
        b'{"pixels": [' + b"NaN, " * 783 + b"NaN]}",
        json.dumps({"pixels": [*pixels, 1e400]}).encode(),
        b'{"pixels": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b"[" * 10_000_000,
    ):
        answer = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code in (400, 413, 422) and "error" in answer.json(), answer.text
    assert client.get("/healthz").status_code == 200


def test_serve_refuses_ports_it_cannot_listen_on_in_one_line(model, capsys):
    for port in ("-1", "65536", "http"):
        with pytest.raises(SystemExit) as done:
            main(["serve", str(model), "--port", port])
        assert done.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mnistlab serve: error: argument --port") and "\n" not in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        assert main(["serve", str(model), "--port", str(busy.getsockname()[1])]) == 1
        err = capsys.readouterr().err.strip()
        assert "cannot listen on 127.0.0.1:" in err and "in use" in err and "\n" not in err
    finally:
        busy.close()


# --- the server under load ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(model):
    """The app served by uvicorn on a free loopback port, in a thread of this process, with a short body
    deadline; its log lines are collected. Stopped by the fixture."""
    import logging
    import threading

    import uvicorn

    from mnistlab.serving import server

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    for name in ("mnistlab.serve", "uvicorn.error"):
        logging.getLogger(name).addHandler(handler)
    app = server.create_app(Predictor(model), "load test", body_seconds=1.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=2, limit_concurrency=256)
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield sock.getsockname()[1], lines
    running.should_exit = True
    thread.join(timeout=30)
    for name in ("mnistlab.serve", "uvicorn.error"):
        logging.getLogger(name).removeHandler(handler)


def _upload(port: int, body: bytes, name: str = "d.png") -> tuple[int, float]:
    boundary = "mnistlabboundary"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/predict", data=form,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            status = answer.status
    except urllib.error.HTTPError as refused:
        status = refused.code
    return status, time.perf_counter() - started


def _healthz(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=60) as answer:
        assert answer.status == 200
    return time.perf_counter() - started


def _large_png(side: tuple[int, int], digit: np.ndarray) -> bytes:
    """A mostly blank page of `side` pixels with a digit on it: small as a file, large decoded."""
    page = Image.new("L", side, 255)
    ink = Image.fromarray(((1 - digit) * 255).astype(np.uint8)).resize((side[1] // 3,) * 2)
    page.paste(ink, (side[0] // 3, side[1] // 3))
    out = io.BytesIO()
    page.save(out, "PNG", optimize=True)
    return out.getvalue()


def test_the_server_stays_responsive_while_uploads_decode(live_server, digits):
    """Ten uploads decoding at once (12-megapixel pages), ten more that decode to 6000x6000 (refused
    from their header), and /healthz asked throughout: it answers in milliseconds, not after the
    decoding (13.7 s before the decoding left the event loop)."""
    port, _ = live_server
    x, y = digits
    allowed, bomb = _large_png((4000, 3000), x[5]), _large_png((6000, 6000), x[5])
    assert len(allowed) < 1 << 20 and len(bomb) < 1 << 20
    idle = [_healthz(port) for _ in range(5)]
    with ThreadPoolExecutor(20) as pool:
        uploads = [pool.submit(_upload, port, body) for body in [allowed] * 10 + [bomb] * 10]
        busy = []
        while not all(u.done() for u in uploads[:10]) or len(busy) < 5:
            busy.append(_healthz(port))
        results = [u.result() for u in uploads]
    statuses = [status for status, _ in results]
    assert statuses[:10] == [200] * 10 and statuses[10:] == [400] * 10
    upload_seconds = max(seconds for _, seconds in results[:10])
    print(
        f"healthz idle median {1e3 * np.median(idle):.1f} ms; during 20 uploads: median "
        f"{1e3 * np.median(busy):.1f} ms, max {1e3 * max(busy):.1f} ms over {len(busy)} asks; "
        f"uploads took up to {upload_seconds:.2f} s"
    )
    assert np.median(busy) < 0.1


def test_slow_and_vanishing_clients_neither_stall_the_server_nor_leave_tracebacks(live_server, digits):
    port, lines = live_server
    before = len(lines)
    slow = socket.create_connection(("127.0.0.1", port))  # sends half its body, then nothing
    slow.sendall(
        b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n[0,"
    )
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]  # connect, say nothing
    for sock in idle[:25]:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    gone = socket.create_connection(("127.0.0.1", port))  # hangs up mid-upload
    gone.sendall(
        b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    )
    gone.close()
    assert _healthz(port) < 1.0
    slow.settimeout(10)
    answer = slow.recv(4096).decode()
    assert answer.startswith("HTTP/1.1 408") and "took over 1 s" in answer
    for sock in [slow, *idle]:
        sock.close()
    x, y = digits
    status, _ = _upload(port, _png(_page(x[6])))
    assert status == 200
    time.sleep(0.5)
    new = lines[before:]
    assert not any("Traceback" in line or "Exception in ASGI" in line for line in new), new
    assert any("took over 1 s" in line for line in new) and any("hung up" in line for line in new), new


def test_the_api_docs_work_offline_and_try_it_out_reads_an_uploaded_digit(model, digits, tmp_path):
    """/docs in headless Chromium with every request beyond the server refused: Swagger UI comes from the
    installed package, and its "Try it out" sends a picture through the declared form field."""
    from playwright.sync_api import sync_playwright

    from .test_report import _chromium

    chromium = _chromium()
    x, y = digits
    picture = tmp_path / "seven.png"
    _page(x[0]).save(picture)
    refused = []
    with _serving(model) as base:

        def only_the_server(route):
            if route.request.url.startswith(base):
                route.continue_()
            else:
                refused.append(route.request.url)
                route.abort()

        flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=flags)
            context = browser.new_context(offline=False)
            context.route("**/*", only_the_server)
            page = context.new_page()
            page.goto(f"{base}/docs")
            operation = page.locator("#operations-default-predict_api_predict_post")
            operation.locator(".opblock-summary").click()
            operation.get_by_role("button", name="Try it out").click()
            operation.locator('input[type="file"]').set_input_files(str(picture))
            operation.get_by_role("button", name="Execute").click()
            answer = operation.locator(".live-responses-table .response-col_description pre").first
            answer.wait_for(timeout=30_000)
            body = json.loads(answer.text_content())
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "docs-try-it-out.png"), full_page=True)
            browser.close()
    assert refused == [] and body["label"] == str(y[0]) and not body["empty"]


@contextlib.contextmanager
def _serving(model: Path):
    """`mnistlab serve` on a free loopback port, as a user starts it: its address once /healthz answers."""
    port = _free_port()
    command = [sys.executable, "-m", "mnistlab.cli", "serve", str(model), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, server.stderr.read()
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)
