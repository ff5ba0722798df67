"""The input's layout: its mean intensity per cell of a LAYOUT_GRID x LAYOUT_GRID grid, in
[0, 1], row by row. The network appends it to its features (`pneumonia.model.network`); the
intended-use head can read its left-right asymmetry (`pneumonia.decision.use`). Here, where
both may import it without TensorFlow and without making the network depend on the head."""

# 8: 64 values, 20 px cells at 160 px (benchmarks/gate_framing.py, docs/model-quality.md).
LAYOUT_GRID = 8
