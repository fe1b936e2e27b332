"""rlvf: C3PO — learning from verbal feedback without overgeneralization — in plain PyTorch."""

__version__ = "0.1.0"
