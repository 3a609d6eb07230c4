"""Fine-tuning, in PyTorch: backbones and their blocks, datasets and folds, frozen-prefix
features, the training loop, and the baseline methods behind one method interface.

* :mod:`.backbones` — block maps (spec §2.2–2.3), offline ImageNet weights;
* :mod:`.data` — datasets, splits, fingerprints, stratified folds (spec §5);
* :mod:`.features` — the frozen-prefix feature cache;
* :mod:`.training` — the one training loop (spec §4) and the :class:`~.training.Method` interface;
* :mod:`.baselines` — full fine-tuning, linear probing, AutoRGN, L2-SP, L1-SP, LoRA, BitFit, LLRD.

Imports no Optuna and no database.
"""
