"""fashiontag: tag fashion product photos with one multi-output CNN.

    from fashiontag import Tagger
    tagger = Tagger.load()
    result = tagger("shirt.jpg")
"""

__version__ = "0.1.0"

from fashiontag.model_folder import INPUT_HW  # noqa: E402 - the default input size; each model records its own


def __getattr__(name: str):
    # Imported on first use: `import fashiontag.data.catalog` and the CLI's start stay free of the inference stack.
    if name in ("Tagger", "PhotoResult", "Tag"):
        from fashiontag.inference import tagger
        return getattr(tagger, name)
    raise AttributeError(f"module 'fashiontag' has no attribute {name!r}")


__all__ = ["Tagger", "PhotoResult", "Tag", "INPUT_HW", "__version__"]
