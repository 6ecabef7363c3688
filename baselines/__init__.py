"""Peer methods the demo compares UVC against, at the same MACs.

- baselines.magnitude: uniform one-shot magnitude pruning (same heads and
  neurons removed in every block), written as a stage-1 file for post_train.py.
- baselines.torch_pruning: Torch-Pruning's MetaPruner (heads, head dims, MLP
  neurons), fine-tuned by baselines.finetune with stage 2's loop.

Submodules are imported on use (torch_pruning and fvcore are only needed by
the Torch-Pruning baseline).
"""
