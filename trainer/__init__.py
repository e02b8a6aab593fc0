"""segflow.trainer: PyTorch training of FlowSDF and SSB vector-field nets (needs the ``train`` extra).

Importing this package does not import torch; the submodules that need it do.
"""
