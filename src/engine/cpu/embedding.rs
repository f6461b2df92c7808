//! Token embedding: a row of the table per token.

use rayon::prelude::*;

use super::SendPtr;
use crate::engine::Float;

pub fn forward<T: Float>(out: &mut [T], tokens: &[u32], table: &[T], c: usize) {
    out.par_chunks_mut(c)
        .zip(tokens.par_iter())
        .for_each(|(out, &token)| {
            let start = token as usize * c;
            out.copy_from_slice(&table[start..start + c]);
        });
}

/// `dtable[token] += dout[row]`; each thread owns a range of channels, so rows that share a
/// token never race and the summation order is fixed.
pub fn backward<T: Float>(dtable: &mut [T], tokens: &[u32], dout: &[T], c: usize) {
    const CHUNK: usize = 32;
    let chunks = c.div_ceil(CHUNK);
    let vocab = dtable.len() / c;
    let table_ptr = SendPtr(dtable.as_mut_ptr());
    (0..chunks).into_par_iter().for_each(|chunk| {
        let lo = chunk * CHUNK;
        let hi = (lo + CHUNK).min(c);
        let table_ptr = &table_ptr;
        for (row, &token) in tokens.iter().enumerate() {
            let token = token as usize;
            assert!(
                token < vocab,
                "token {token} outside the vocabulary of {vocab}"
            );
            for j in lo..hi {
                // SAFETY: `token < vocab` and `j < c`, so the index is inside `dtable`; channel
                // ranges of different tasks are disjoint, so no two tasks write one element.
                unsafe { *table_ptr.0.add(token * c + j) += dout[row * c + j] };
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cpu::gradcheck::check_gradients;
    use crate::engine::cpu::{dot, random};

    #[test]
    fn backward_matches_finite_differences() {
        let (vocab, c) = (7, 40);
        let tokens = [3u32, 1, 3, 6, 0, 3];
        let table = random(vocab * c, 1);
        let upstream = random(tokens.len() * c, 2);
        let loss = |v: &[Vec<f64>]| {
            let mut out = vec![0.0; tokens.len() * c];
            forward(&mut out, &tokens, &v[0], c);
            dot(&out, &upstream)
        };
        let mut dtable = vec![0.0; vocab * c];
        backward(&mut dtable, &tokens, &upstream, c);
        check_gradients(&[table], &[dtable], loss);
    }
}
