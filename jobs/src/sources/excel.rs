//! Excel and OpenDocument workbooks (xlsx, xlsm, xlsb, xls, ods) through calamine.
//!
//! xlsx is read cell by cell as the sheet XML streams (memory holds one row); the older binary and
//! ODS formats are read through calamine's sheet range, which holds that one sheet (xls caps a sheet
//! at 65,536 rows). A remote workbook is first streamed to a temporary file, as the zip needs seeks.
//! Cells become text and share the CSV typing path, so types, inference and errors behave alike.

use std::io::BufReader;

use calamine::{
    DataType as CellValue, Ods, Reader, Sheets, Xls, Xlsb, Xlsx, open_workbook_from_rs,
};
use carga_config::{ErrorCellPolicy, ExcelOptions, ExcelSource, ExtraCellPolicy, HeaderRow};

use super::table::TableAssembler;
use super::{FileFormat, SourceOutput};
use crate::error::Result;
use crate::storage::{LocalCopy, SourceObject};
use crate::validation::ReadStats;

type Workbook = Sheets<BufReader<std::fs::File>>;

/// Opens the workbook from the open file (never its path again), by the format its extension
/// names, or by trying each format when it names none.
fn open_workbook(copy: &LocalCopy, extension: Option<&str>) -> Result<Workbook, String> {
    let reader = || copy.file().map(BufReader::new).map_err(|e| e.to_string());
    let named = match extension {
        Some("xls" | "xla") => Some(
            open_workbook_from_rs::<Xls<_>, _>(reader()?)
                .map(Sheets::Xls)
                .map_err(|e| e.to_string()),
        ),
        Some("xlsx" | "xlsm" | "xlam") => Some(
            open_workbook_from_rs::<Xlsx<_>, _>(reader()?)
                .map(Sheets::Xlsx)
                .map_err(|e| e.to_string()),
        ),
        Some("xlsb") => Some(
            open_workbook_from_rs::<Xlsb<_>, _>(reader()?)
                .map(Sheets::Xlsb)
                .map_err(|e| e.to_string()),
        ),
        Some("ods") => Some(
            open_workbook_from_rs::<Ods<_>, _>(reader()?)
                .map(Sheets::Ods)
                .map_err(|e| e.to_string()),
        ),
        _ => None,
    };
    if let Some(opened) = named {
        return opened;
    }
    if let Ok(w) = open_workbook_from_rs::<Xlsx<_>, _>(reader()?) {
        return Ok(Sheets::Xlsx(w));
    }
    if let Ok(w) = open_workbook_from_rs::<Xls<_>, _>(reader()?) {
        return Ok(Sheets::Xls(w));
    }
    if let Ok(w) = open_workbook_from_rs::<Xlsb<_>, _>(reader()?) {
        return Ok(Sheets::Xlsb(w));
    }
    open_workbook_from_rs::<Ods<_>, _>(reader()?)
        .map(Sheets::Ods)
        .map_err(|_| "cannot detect the workbook format (xlsx, xlsm, xlsb, xls or ods)".into())
}

/// A workbook's sheet (xlsx, xlsm, xlsb, xls, ods).
impl FileFormat for ExcelSource {
    fn location(&self) -> &str {
        &self.location
    }

    fn parse(&self, object: &SourceObject, output: SourceOutput) -> Result<ReadStats> {
        read(object, &self.excel, output)
    }
}

pub(crate) fn read(
    object: &SourceObject,
    opts: &ExcelOptions,
    ctx: SourceOutput,
) -> Result<ReadStats> {
    let copy = object.local_copy(&ctx.runtime)?;
    let extension = std::path::Path::new(&object.display)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let mut workbook = open_workbook(&copy, extension.as_deref())
        .map_err(|e| ctx.bad_input(format!("not a readable Excel/ODS workbook: {e}")))?;
    let sheets = workbook.sheet_names();
    let sheet = match &opts.sheet {
        Some(wanted) if sheets.contains(wanted) => wanted.clone(),
        Some(wanted) => {
            return Err(ctx.bad_input(format!(
                "sheet '{wanted}' not found; the workbook has: {}",
                sheets.join(", ")
            )));
        }
        None => match sheets.first() {
            Some(first) => first.clone(),
            None => return Err(ctx.bad_input("the workbook has no sheets")),
        },
    };
    let location = format!("{} sheet '{sheet}'", ctx.location);
    let mut rows = RowFeed::new(ctx, location, opts);
    match &mut workbook {
        Sheets::Xlsx(xlsx) => {
            let mut cells = xlsx
                .worksheet_cells_reader(&sheet)
                .map_err(|e| rows.bad_input(format!("cannot read the sheet: {e}")))?;
            let mut current_row = None;
            let mut row_cells: Vec<(u32, CellText)> = Vec::new();
            loop {
                let cell = cells.next_cell().map_err(|e| {
                    rows.bad_input(format!(
                        "cannot read a cell after row {}: {e}",
                        current_row.map_or(0, |r: u32| r + 1)
                    ))
                })?;
                let Some(cell) = cell else { break };
                let (row, column) = cell.get_position();
                if current_row != Some(row) {
                    if let Some(previous) = current_row {
                        rows.feed(previous, &row_cells)?;
                    }
                    row_cells.clear();
                    current_row = Some(row);
                }
                row_cells.push((column, cell_text(cell.get_value())));
                if rows.is_closed() {
                    break;
                }
            }
            if let Some(last) = current_row {
                rows.feed(last, &row_cells)?;
            }
        }
        other => {
            let range = other
                .worksheet_range(&sheet)
                .map_err(|e| rows.bad_input(format!("cannot read the sheet: {e}")))?;
            let (first_row, first_column) = range.start().unwrap_or((0, 0));
            let mut row_cells = Vec::new();
            for (i, cells) in range.rows().enumerate() {
                row_cells.clear();
                row_cells.extend(
                    cells
                        .iter()
                        .enumerate()
                        .map(|(j, cell)| (first_column + j as u32, cell_text(cell))),
                );
                rows.feed(first_row + i as u32, &row_cells)?;
                if rows.is_closed() {
                    break;
                }
            }
        }
    }
    rows.finish()
}

/// A cell as text, `None` when empty, `Err` with the Excel error (`#DIV/0!`, `#N/A`, ...).
type CellText = Result<Option<String>, String>;

fn cell_text<T: CellValue>(cell: &T) -> CellText {
    if cell.is_empty() {
        return Ok(None);
    }
    if let Some(error) = cell.get_error() {
        return Err(error.to_string());
    }
    if let Some(text) = cell.get_string() {
        return Ok((!text.is_empty()).then(|| text.to_owned()));
    }
    if let Some(value) = cell.get_int() {
        return Ok(Some(value.to_string()));
    }
    if let Some(value) = cell.get_float() {
        // Whole numbers print without ".0", so a column of them infers as integers.
        return Ok(Some(if value.fract() == 0.0 && value.abs() < 9.0e15 {
            format!("{}", value as i64)
        } else {
            format!("{value}")
        }));
    }
    if let Some(value) = cell.get_bool() {
        return Ok(Some(value.to_string()));
    }
    if let Some(datetime) = cell.get_datetime() {
        if datetime.is_datetime() {
            return match datetime.as_datetime() {
                Some(dt) if dt.time() == chrono::NaiveTime::MIN => Ok(Some(dt.date().to_string())),
                Some(dt) => Ok(Some(dt.format("%Y-%m-%dT%H:%M:%S%.f").to_string())),
                None => Err(format!("date serial {} is out of range", datetime.as_f64())),
            };
        }
        // A duration: kept as its number of days, as Excel stores it.
        return Ok(Some(format!("{}", datetime.as_f64())));
    }
    if let Some(text) = cell.get_datetime_iso().or(cell.get_duration_iso()) {
        return Ok(Some(text.to_owned()));
    }
    Ok(cell.as_string())
}

/// Turns sheet rows into table rows: finds the header row, then feeds data rows.
struct RowFeed {
    /// 0-based; `None`: the first row holding a value.
    header_row: Option<u32>,
    infer_rows: usize,
    error_cells: ErrorCellPolicy,
    extra_cells: ExtraCellPolicy,
    /// Cells written as null because they held an Excel error, and cells left out because they
    /// lay beyond the header's columns (with the first such column seen).
    error_cells_nulled: u64,
    extra_cells_ignored: u64,
    first_extra: Option<String>,
    location: String,
    ctx: Option<SourceOutput>,
    table: Option<TableAssembler>,
    first_column: u32,
}

impl RowFeed {
    fn new(ctx: SourceOutput, location: String, opts: &ExcelOptions) -> Self {
        Self {
            header_row: match opts.header_row {
                HeaderRow::Auto => None,
                HeaderRow::Row(row) => Some(row.saturating_sub(1)),
            },
            infer_rows: opts.infer_rows,
            error_cells: opts.error_cells,
            extra_cells: opts.extra_cells,
            error_cells_nulled: 0,
            extra_cells_ignored: 0,
            first_extra: None,
            location,
            ctx: Some(ctx),
            table: None,
            first_column: 0,
        }
    }

    fn bad_input(&self, message: String) -> crate::JobError {
        crate::JobError::bad_input(self.location.clone(), message)
    }

    fn is_closed(&self) -> bool {
        self.table.as_ref().is_some_and(TableAssembler::is_closed)
    }

    /// `row` is 0-based as calamine gives it; messages use Excel's 1-based numbers.
    fn feed(&mut self, row: u32, cells: &[(u32, CellText)]) -> Result<()> {
        let blank = cells.iter().all(|(_, c)| matches!(c, Ok(None)));
        match self.header_row {
            Some(header) if row < header => return Ok(()),
            // `auto`: rows before the first one holding a value are not the header.
            None if self.table.is_none() && blank => return Ok(()),
            _ => {}
        }
        let Some(table) = &mut self.table else {
            return self.start(row, cells);
        };
        let excel_row = u64::from(row) + 1;
        let mut values: Vec<Option<&str>> = vec![None; table.width()];
        for (column, cell) in cells {
            let name_index = column.checked_sub(self.first_column).map(|c| c as usize);
            let text = match cell {
                Ok(None) => continue,
                Ok(Some(text)) => text.as_str(),
                Err(error) => {
                    if self.error_cells == ErrorCellPolicy::Null {
                        self.error_cells_nulled += 1;
                        continue;
                    }
                    let name = name_index
                        .and_then(|i| table.names().get(i).cloned())
                        .unwrap_or_else(|| column_letters(*column));
                    let reason = format!(
                        "row {excel_row}: column '{name}' holds the Excel error {error} (excel.error_cells: null writes such cells as null)"
                    );
                    return table.reject(excel_row, "cell error", reason);
                }
            };
            match name_index.filter(|&i| i < values.len()) {
                Some(i) => values[i] = Some(text),
                None if self.extra_cells == ExtraCellPolicy::Ignore => {
                    self.extra_cells_ignored += 1;
                    if self.first_extra.is_none() {
                        self.first_extra = Some(format!("{}{excel_row}", column_letters(*column)));
                    }
                }
                None => {
                    let reason = format!(
                        "row {excel_row}: cell {}{excel_row} has a value outside the header's columns (excel.extra_cells: ignore leaves such cells out)",
                        column_letters(*column)
                    );
                    return table.reject(excel_row, "value outside header", reason);
                }
            }
        }
        table.push_row(excel_row, &values)
    }

    fn start(&mut self, row: u32, cells: &[(u32, CellText)]) -> Result<()> {
        if let Some(header) = self.header_row
            && (row > header || cells.iter().all(|(_, c)| matches!(c, Ok(None))))
        {
            return Err(self.bad_input(format!(
                "header row {} is empty (set excel.header_row to the row holding the column names, or auto)",
                header + 1
            )));
        }
        let present: Vec<&(u32, CellText)> = cells
            .iter()
            .filter(|(_, c)| !matches!(c, Ok(None)))
            .collect();
        self.first_column = present.first().map_or(0, |(c, _)| *c);
        let last_column = present.last().map_or(0, |(c, _)| *c);
        let mut problems = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for column in self.first_column..=last_column {
            let letters = column_letters(column);
            let text = cells
                .iter()
                .find(|(c, _)| *c == column)
                .and_then(|(_, cell)| cell.clone().ok().flatten())
                .map(|t| t.trim().to_owned())
                .unwrap_or_default();
            let name = if text.is_empty() {
                problems.push(format!(
                    "column {letters} has no name; named column_{letters}"
                ));
                format!("column_{letters}")
            } else {
                text
            };
            if names.contains(&name) {
                return Err(self.bad_input(format!(
                    "header names column '{name}' twice (again in column {letters})"
                )));
            }
            names.push(name);
        }
        let ctx = self.ctx.take().expect("header is read once");
        let stats = ReadStats {
            header_problems: problems,
            ..ReadStats::default()
        };
        self.table = Some(TableAssembler::new(ctx, names, self.infer_rows, stats));
        Ok(())
    }

    fn finish(self) -> Result<ReadStats> {
        let Some(table) = self.table else {
            let message = match self.header_row {
                Some(header) => format!("the sheet is empty: no header at row {}", header + 1),
                None => "the sheet is empty: no row holds a value".to_owned(),
            };
            return Err(crate::JobError::bad_input(self.location, message));
        };
        let mut stats = table.finish()?;
        if self.error_cells_nulled > 0 {
            stats.warnings.push(format!(
                "{} cell(s) held an Excel error (#DIV/0!, #N/A, ...) and were written as null (excel.error_cells: fail refuses them)",
                self.error_cells_nulled
            ));
        }
        if self.extra_cells_ignored > 0 {
            stats.warnings.push(format!(
                "{} cell(s) beyond the header's columns were left out, the first at {} (excel.extra_cells: fail refuses them)",
                self.extra_cells_ignored,
                self.first_extra.as_deref().unwrap_or("?")
            ));
        }
        Ok(stats)
    }
}

/// Excel's column name for a 0-based index: 0 -> A, 25 -> Z, 26 -> AA.
fn column_letters(index: u32) -> String {
    let mut n = index + 1;
    let mut letters = Vec::new();
    while n > 0 {
        let rem = (n - 1) % 26;
        letters.push(b'A' + rem as u8);
        n = (n - 1) / 26;
    }
    letters.reverse();
    String::from_utf8(letters).expect("ASCII letters")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_letters_follow_excel() {
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(25), "Z");
        assert_eq!(column_letters(26), "AA");
        assert_eq!(column_letters(701), "ZZ");
        assert_eq!(column_letters(702), "AAA");
    }

    #[test]
    fn cells_become_text_that_types_like_csv() {
        use calamine::Data;
        assert_eq!(cell_text(&Data::Float(3.0)), Ok(Some("3".into())));
        assert_eq!(cell_text(&Data::Float(2.5)), Ok(Some("2.5".into())));
        assert_eq!(cell_text(&Data::Bool(true)), Ok(Some("true".into())));
        assert_eq!(cell_text(&Data::Empty), Ok(None));
        assert_eq!(cell_text(&Data::String(String::new())), Ok(None));
        assert!(cell_text(&Data::Error(calamine::CellErrorType::Div0)).is_err());
    }
}
