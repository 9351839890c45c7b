"""Data stages: download (sources -> data/raw), prepare (raw -> data/prepared), load (-> tf.data)."""

DATASETS = ("fashion_mnist", "cifar10")
SPLITS = ("train", "valid", "test")  # of every prepared dataset
