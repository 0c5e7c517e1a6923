//! The one way the CLI prints a table: kubectl style, columns as wide as
//! their widest cell, no borders, nothing wrapped (comfy-table does the
//! widths; a fixed width misaligned on real node names).

/// A plain table with a header row; every line ends in `\n`.
pub fn plain(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    // The preset pads each cell by one space on both sides.
    let mut out: String = t
        .lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(&l).trim_end().to_string() + "\n")
        .collect();
    if out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_fit_the_widest_cell() {
        let t = super::plain(
            &["NAME", "X"],
            vec![
                vec!["a-very-long-node-name-indeed".into(), "1".into()],
                vec!["b".into(), "22".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        let col = lines[0].find('X').unwrap();
        assert_eq!(lines[1].find('1'), Some(col), "{t}");
        assert_eq!(lines[2].find("22"), Some(col), "{t}");
    }
}
