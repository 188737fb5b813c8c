//! How a batch of real FFTs is split into cuFFT executions.

/// Rows per cuFFT execution are limited so that one execution covers at most this many real
/// elements (keeps 32-bit plans valid and bounds a plan's work area).
const MAX_ELEMS_PER_EXEC: usize = 1 << 27;

/// Splits `rows` transforms of length `len` into executions of at most
/// [`MAX_ELEMS_PER_EXEC`] elements (or two rows, for longer ones): (first row, rows) pairs.
/// Every execution starts an even number of reals into the buffer, so that it stays aligned
/// like cuFFT's complex type: for odd `len`, each execution takes an even number of rows.
pub(crate) fn chunks(rows: usize, len: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut per = (MAX_ELEMS_PER_EXEC / len.max(1)).max(1);
    if len % 2 == 1 {
        per = (per & !1).max(2);
    }
    (0..rows)
        .step_by(per)
        .map(move |start| (start, per.min(rows - start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_rows_at_even_offsets() {
        for len in [1, 2, 3, 5, 7, 9, 64, 1001, 4096, (1 << 27) + 1, 1 << 28] {
            for rows in [0, 1, 2, 3, 5, 1 << 10, (1 << 27) / 5 + 3, 1 << 20] {
                let mut next = 0;
                for (start, count) in chunks(rows, len) {
                    assert_eq!(start, next, "len {len}, rows {rows}");
                    assert!(
                        count > 0 && (start * len) % 2 == 0,
                        "len {len}, rows {rows}"
                    );
                    assert!(count * len <= MAX_ELEMS_PER_EXEC || count <= 2);
                    next = start + count;
                }
                assert_eq!(next, rows, "len {len}, rows {rows}");
            }
        }
    }
}
