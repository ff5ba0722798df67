"""The network and its training: architecture, augmentation, the optimiser, distribution, and
the faithfulness checks of its activation maps (Grad-CAM, deletion, randomisation)."""
