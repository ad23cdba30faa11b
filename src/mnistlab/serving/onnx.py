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
from mnistlab.files import atomic_path
from mnistlab.serving.prediction import Reader


def export(run_folder: Path, out: Path) -> None:
    """Write the run folder's model (every seed's, voting) as ONNX to `out`."""
    import onnx
    import torch

    from mnistlab.nn.mlp import logits
    from mnistlab.serving.predictor import Predictor

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
        for key, value in (("classes", json.dumps(predictor.classes)), ("threshold", repr(predictor.threshold))):
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp)


class OnnxPredictor(Reader):
    def __init__(self, path: Path):
        import onnxruntime

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
