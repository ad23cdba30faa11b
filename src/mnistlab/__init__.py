"""mnistlab: the classic MLP study of MNIST, reproduced from one command, measured and explained."""

__version__ = "0.1.0"
