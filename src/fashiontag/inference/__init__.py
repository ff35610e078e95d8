"""The inference flow: engine -> tagger -> CSV (predict), HTTP (serve), web page (review), Ray (ray_backend).

engines (torch or onnxruntime behind one interface), onnx_export (writes and checks model.onnx), thresholds
(acceptance thresholds and their fit), tagger (photos in, PhotoResult out), predict (folders and catalogs to
CSV/Parquet), ray_backend (the same on a Ray cluster). Nothing here imports fashiontag.training."""
