"""A trained model put to use: reading any image as MNIST was made, predicting from a run folder or an
ONNX file, and serving a drawing page with a JSON API."""
