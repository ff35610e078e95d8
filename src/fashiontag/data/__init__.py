"""Reading what the model learns from and looks at, shared by training and inference: catalogs (CSV, Parquet,
spreadsheets), photos (loading, framing, dominant colours), titles (tokenizing), the photo cache, the split and
vocabularies, the taxonomy, and `explore`'s view of a catalog."""
