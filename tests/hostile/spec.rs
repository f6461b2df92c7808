//! Rows: the spec, overlays, `--set` and the command line's own arguments.

use super::*;

pub fn rows() -> Vec<Row> {
    vec![]
}
