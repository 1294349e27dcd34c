"""Demo models, synthetic data and the ``nndiag demo`` run."""

from nndiag.demo.models import LSTMClassifier, blobs, cnn_bn, images, mlp, sequences

__all__ = ["LSTMClassifier", "blobs", "cnn_bn", "images", "mlp", "sequences"]
