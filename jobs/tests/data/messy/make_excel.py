"""Writes the Excel files of the messy-input corpus (jobs/tests/messy_inputs.rs).

Run once with openpyxl (`pip install openpyxl`); the .xlsx files are committed, so the tests
need no Python. Each sheet is small and holds one oddity.
"""
from pathlib import Path

from openpyxl import Workbook

here = Path(__file__).parent


def save(name, rows, start_row=1, start_col=1):
    book = Workbook()
    sheet = book.active
    sheet.title = "Datos"
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            if value is not None:
                sheet.cell(row=start_row + r, column=start_col + c, value=value)
    book.save(here / name)


# A formula error cell (#DIV/0! written as the cell's error value).
save("error-cell.xlsx", [["id", "ratio"], [1, 0.5], [2, "#DIV/0!"], [3, 0.25]])
# The header at C3: two empty rows above, two empty columns to the left.
save("offset-header.xlsx", [["id", "temperature"], [1, 21.5], [2, 19.0]], start_row=3, start_col=3)
# Values beyond the header's columns (in column D of a two-column header).
save("extra-cells.xlsx", [["id", "name"], [1, "a", None, "stray"], [2, "b"], [3, "c", None, "more"]])
