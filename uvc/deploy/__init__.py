"""From a searched architecture to a deployed model: the frozen architecture (architecture, freeze,
frozen), the greedy fit to the budget (fit), the stage files (stagefile), the compact model (export),
ONNX (onnx_export) and reference checkpoints brought in as stage-1 files (reference)."""
