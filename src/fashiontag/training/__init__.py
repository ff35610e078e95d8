"""The training flow: catalog -> photo cache -> split/vocabularies -> model -> train -> calibrate -> evaluate.

config (the typed recipe), dataset (tensors from the cache), augment, train (the loop and the model folder it
writes), temperatures (per-task temperature scaling), calibrate (thresholds for the accept-rate promise, the
`calibrate` command), evaluate, audit (label errors in a catalog), tune (Optuna), plots, runlock. Training may import
inference (it fits thresholds through the tagger's decoding); inference never imports training."""
