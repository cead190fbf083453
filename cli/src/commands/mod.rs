//! One module per group of subcommands; each exposes its clap types and a `run`.

pub mod agent;
pub mod apply;
pub mod cluster;
pub mod completion;
pub mod config;
pub mod container;
pub mod daemon;
pub mod delete;
pub mod describe;
pub mod diff;
pub mod events;
pub mod exec;
pub mod get;
pub mod image;
pub mod logs;
pub mod members;
pub mod nodes;
pub mod output;
pub mod scale;
pub mod server;
pub mod target;
pub mod wait;

/// The process exit code for an error, following Docker: 125 when Gantry itself failed,
/// 126 when the command could not be invoked, 127 when it was not found.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<gantry_runtime::container::ContainerError>() {
            return e.exit_code();
        }
    }
    125
}

/// Prints aligned columns the way kubectl and docker do: no borders, at least three spaces
/// between columns, no trailing spaces.
pub fn print_table<R: AsRef<[String]>>(headers: &[&str], rows: &[R]) {
    print!("{}", format_table(headers, rows));
}

/// The text of [`print_table`].
pub fn format_table<R: AsRef<[String]>>(headers: &[&str], rows: &[R]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.as_ref().iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["web".to_string(), "3/3".to_string()],
            vec!["a".to_string(), "".to_string()],
        ];
        let text = super::format_table(&["NAME", "READY"], &rows);
        assert_eq!(text, "NAME   READY\nweb    3/3\na\n");
    }
}
