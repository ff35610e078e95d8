"""fashiontag: tag fashion product photos with one multi-output CNN."""

__version__ = "0.1.0"

TASKS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
# Model input, height x width: the catalog's photos are 60 wide and 80 high.
INPUT_HW = (80, 60)
