"""fashiontag: tag fashion product photos with one multi-output CNN.

    from fashiontag import Tagger
    tagger = Tagger.load()
    result = tagger("shirt.jpg")
"""

__version__ = "0.1.0"

# Default model input, height x width: the Kaggle catalog's photos are 60 wide and 80 high. A model records its own.
INPUT_HW = (80, 60)


def __getattr__(name: str):
    # Imported on first use: `import fashiontag.catalog` and the CLI's start stay free of the inference stack.
    if name in ("Tagger", "PhotoResult", "Tag"):
        from fashiontag import tagger
        return getattr(tagger, name)
    raise AttributeError(f"module 'fashiontag' has no attribute {name!r}")


__all__ = ["Tagger", "PhotoResult", "Tag", "INPUT_HW", "__version__"]
