"""Peer methods the demo and the benchmark compare UVC against, at the same MACs.

- baselines.magnitude: one-shot magnitude pruning of the dense model, written as a
  stage-1 file for post_train.py: uniform (same heads and neurons removed in every
  block) or the greedy global fit of UVC's freeze (uvc.deploy.fit.fit_to_budget, no search).
- baselines.tp_prune: Torch-Pruning's MetaPruner (head dims, heads, MLP neurons):
  Taylor importance with global isomorphic ranking (its ViT example's setting), or
  local magnitude; baselines.torch_pruning is its command line, which fine-tunes the
  result with baselines.finetune (stage 2's loop).
- baselines.macs: fvcore and closed-form MACs of physically pruned models.

Submodules are imported on use (torch_pruning and fvcore are only needed by
the Torch-Pruning baseline).
"""
