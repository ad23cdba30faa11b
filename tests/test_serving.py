"""The digit reader: MNIST-style preprocessing, `mnistlab predict`, the JSON API, ONNX export, and the
drawing page in a real browser."""

import base64
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
from mnistlab.serving.images import FRAME, ImageError, naive, read, to_mnist
from mnistlab.serving.photos import photo
from mnistlab.serving.predictor import Predictor


@pytest.fixture(scope="module")
def model(tmp_path_factory, mnist_dir) -> Path:
    """The final model's architecture, trained briefly (lr 1e-3, batch 128, 2 epochs): about 97% on test."""
    out = tmp_path_factory.mktemp("reader") / "final"
    overrides = ["train.learning_rate=1e-3", "train.batch_size=128"]
    api.run("final", overrides=overrides, epochs=2, compile=False, data_dir=mnist_dir, out=out)
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
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mnistlab.cli", "serve", str(model), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
    finally:
        server.terminate()
        server.wait(timeout=30)
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
    (run,) = api.run("final", data_dir=mnist_dir, out=tmp_path / "final")
    reader, rng = Predictor(run.folder.path), np.random.default_rng(0)
    predictions = reader.predict([to_mnist(read(photo(x[i], rng), "photo")) for i in range(1000)])
    assert np.mean([p.label == str(y[i]) for i, p in enumerate(predictions)]) >= 0.97
