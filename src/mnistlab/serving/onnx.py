"""The digit reader as an ONNX file, and reading digits with onnxruntime alone: no torch at run time.

The exported graph takes a batch of 28x28 images (float32, light ink on black, as `images.to_mnist`
makes them) and gives each class's probability, the softmax included; a multi-seed folder's seeds vote
inside the graph. The classes and the uncertainty threshold travel in the file's metadata.
"""

import json
import warnings
from pathlib import Path

import numpy as np

from mnistlab.errors import MnistlabError
from mnistlab.files import MARK, OutputError, atomic_path, check_output, is_ours, regular_file
from mnistlab.serving.prediction import Reader


def export(run_folder: Path, out: Path, overwrite: bool = False) -> None:
    """Write the run folder's model (every seed's, voting) as ONNX to `out`.

    `out` must be a new path, or a file that mnistlab exported (it carries MARK), or any file with
    `overwrite`; never a path inside the run folder, whose files are the run's own."""
    import onnx
    import torch

    from mnistlab.nn.mlp import logits
    from mnistlab.serving.predictor import Predictor

    out, run_folder = Path(out), Path(run_folder)
    if out.resolve().is_relative_to(run_folder.resolve()):
        raise OutputError(f"{out}: inside the run folder {run_folder}, whose files are the run's; export elsewhere")
    check_output(out, folder=False)
    if (out.exists() or out.is_symlink()) and not overwrite and not is_ours(out):
        raise OutputError(f"{out}: exists and is not an export of mnistlab's; --overwrite replaces it")
    predictor = Predictor(run_folder)

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = torch.nn.Parameter(predictor.params, requires_grad=False)

        def forward(self, images):
            x = images.reshape(images.shape[0], -1)
            return torch.softmax(logits(self.params, predictor.architecture, x), -1).mean(0)

    example = torch.zeros(2, 28, 28)
    batch = torch.export.Dim("batch")
    with atomic_path(Path(out)) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices are torch's business, not the user's
        program = torch.onnx.export(
            Graph().eval(),
            (example,),
            input_names=["images"],
            output_names=["probabilities"],
            dynamic_shapes={"images": {0: batch}},
            verbose=False,
        )
        model = program.model_proto
        model.doc_string = f"{MARK}: the digit reader of {run_folder}"  # near the file's start (`is_ours`)
        for key, value in (("classes", json.dumps(predictor.classes)), ("threshold", repr(predictor.threshold))):
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp)


class OnnxPredictor(Reader):
    def __init__(self, path: Path):
        import onnxruntime

        if not regular_file(path):
            raise MnistlabError(f"{path}: {'no such file' if not Path(path).exists() else 'not a regular file'}")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            metadata = self.session.get_modelmeta().custom_metadata_map
            self.classes = json.loads(metadata["classes"])
            self.threshold = float(metadata["threshold"])
        except (KeyError, ValueError) as exc:
            raise MnistlabError(f"{path}: not a digit reader exported by mnistlab ({exc})") from None
        except Exception as exc:  # onnxruntime raises its own exception types, without a common base
            raise MnistlabError(f"{path}: not an ONNX file onnxruntime can load ({type(exc).__name__})") from None

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"images": np.asarray(pixels, np.float32)})[0]
