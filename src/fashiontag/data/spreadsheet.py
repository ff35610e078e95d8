"""CSV and TSV cells that a spreadsheet opens as text, never as a formula (OWASP's "CSV injection").

A photo named `=HYPERLINK("http://evil.example";"x").jpg` puts that text in its row's id and path; a spreadsheet
opening the file would run it. Text cells starting with = + - @, a tab or a carriage return get a leading single
quote. So that the files stay readable by fashiontag itself (`review` loads predict's output, `train --extra`
reads review export's), a cell that starts with a quote gets one too, and `restored` takes exactly one off.
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def inert(value):
    """A text cell made safe to open in a spreadsheet; numbers and booleans pass as they are (a negative
    confidence is a number, not a formula)."""
    if isinstance(value, str) and value[:1] in (*FORMULA_STARTS, QUOTE):
        return QUOTE + value
    return value


def inert_row(row: dict) -> dict:
    return {k: inert(v) for k, v in row.items()}


def restored(cell: str) -> str:
    """A cell as it was before `inert`."""
    return cell[1:] if cell[:1] == QUOTE else cell
