"""The digit reader's speed: start-up and per-image latency of `mnistlab predict` with PyTorch and with
ONNX, and the server's requests per second on loopback with 1 and 8 concurrent clients.

    python benchmarks/serving.py RUN_DIR [--requests 200]
"""

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mnistlab.serving.images import read, to_mnist


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def warm_latency(reader, image: Path, repeats: int = 200) -> float:
    reader.predict_files([image])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        reader.predict_files([image])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def requests_per_second(url: str, body: bytes, clients: int, requests: int) -> float:
    boundary = "mnistlab"
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def ask(_):
        request = urllib.request.Request(
            url, data=form, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(ask, range(clients)))  # warm
        start = time.perf_counter()
        list(pool.map(ask, range(requests)))
    return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "mnistlab.cli"]
    with tempfile.TemporaryDirectory() as scratch:
        image, onnx_file = Path(scratch) / "digit.png", Path(scratch) / "reader.onnx"
        Image.fromarray(np.full((200, 200), 255, np.uint8)).save(image)
        page = np.asarray(Image.open(image), np.uint8).copy()
        page[60:140, 95:105] = 0  # a "1"
        Image.fromarray(page).save(image)
        subprocess.run([*cli, "export", str(args.run), "--onnx", str(onnx_file)], check=True, capture_output=True)

        from mnistlab.serving.onnx import OnnxPredictor
        from mnistlab.serving.predictor import Predictor

        torch_start = statistics.median(seconds([*cli, "predict", str(args.run), str(image)]) for _ in range(3))
        onnx_start = statistics.median(
            seconds([*cli, "predict", "--onnx", str(onnx_file), str(image)]) for _ in range(3)
        )
        print(f"predict, one image, whole command (start-up included): PyTorch {torch_start:.2f} s, "
              f"ONNX {onnx_start:.2f} s")  # fmt: skip
        torch_warm = warm_latency(Predictor(args.run), image)
        onnx_warm = warm_latency(OnnxPredictor(onnx_file), image)
        prepare = statistics.median(_timed(lambda: to_mnist(read(image))) for _ in range(200))
        print(f"one image, warm: PyTorch {torch_warm * 1e3:.2f} ms, ONNX {onnx_warm * 1e3:.2f} ms "
              f"(of which reading and preprocessing {prepare * 1e3:.2f} ms)")  # fmt: skip

        server = subprocess.Popen([*cli, "serve", str(args.run), "--port", str(args.port)], stdout=subprocess.PIPE)
        try:
            server.stdout.readline()
            time.sleep(1.0)
            body = io.BytesIO()
            Image.open(image).save(body, "PNG")
            url = f"http://127.0.0.1:{args.port}/api/predict"
            for clients in (1, 8):
                rate = requests_per_second(url, body.getvalue(), clients, args.requests)
                print(f"server, {clients} concurrent client(s): {rate:.0f} requests/s")
        finally:
            server.terminate()
            server.wait()


def _timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
