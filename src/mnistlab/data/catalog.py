"""The data sets mnistlab knows by name: their classes, published checksums and public mirrors."""

from dataclasses import dataclass

SPLITS = ("train", "validation", "full", "test")  # the lab's four splits (see `dataset`)


def size_label(count: int) -> str:
    """A split's size as the lab report names it: 50k, 5k, 55k; a count that is no whole thousand as is."""
    return f"{count // 1000}k" if count % 1000 == 0 else f"{count:,}"


FILES = {  # role -> file name, without the optional .gz
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class Catalogued:
    """A data set with published checksums and public mirrors."""

    name: str
    title: str
    classes: tuple[str, ...]
    sha256: dict[str, str]  # file name -> SHA-256 of its decompressed bytes
    mirrors: tuple[str, ...]


CATALOG = {
    "mnist": Catalogued(
        name="mnist",
        title="MNIST handwritten digits",
        classes=tuple("0123456789"),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    "fashion-mnist": Catalogued(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando Research)",
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        ),
    ),
}
