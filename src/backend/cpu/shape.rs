//! Narrow, pad and concat along one axis (a tensor seen as `[outer, dim, inner]` around the axis),
//! and rows gathered by index.
use super::Real;

fn split(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (shape[..axis].iter().product(), shape[axis], shape[axis + 1..].iter().product())
}

fn with_dim(shape: &[usize], axis: usize, dim: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[axis] = dim;
    s
}

pub fn narrow<T: Real>(x: &[T], shape: &[usize], axis: usize, start: usize, len: usize) -> (Vec<T>, Vec<usize>) {
    let (outer, dim, inner) = split(shape, axis);
    let mut out = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        out.extend_from_slice(&x[(o * dim + start) * inner..(o * dim + start + len) * inner]);
    }
    (out, with_dim(shape, axis, len))
}

pub fn pad<T: Real>(x: &[T], shape: &[usize], axis: usize, before: usize, after: usize) -> (Vec<T>, Vec<usize>) {
    let (outer, dim, inner) = split(shape, axis);
    let padded = before + dim + after;
    let mut out = vec![T::zero(); outer * padded * inner];
    for o in 0..outer {
        out[(o * padded + before) * inner..(o * padded + before + dim) * inner].copy_from_slice(&x[o * dim * inner..(o + 1) * dim * inner]);
    }
    (out, with_dim(shape, axis, padded))
}

pub fn concat<T: Real>(parts: &[(&[T], &[usize])], axis: usize) -> (Vec<T>, Vec<usize>) {
    let total: usize = parts.iter().map(|(_, s)| s[axis]).sum();
    let (outer, _, inner) = split(parts[0].1, axis);
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (data, s) in parts {
            let d = s[axis];
            out.extend_from_slice(&data[o * d * inner..(o + 1) * d * inner]);
        }
    }
    (out, with_dim(parts[0].1, axis, total))
}

/// Rows `indices` of `table` (`[R, ...]`, each row `row_len` elements); `ops` checked the indices.
pub fn gather_rows<T: Real>(table: &[T], shape: &[usize], indices: &[u32]) -> (Vec<T>, Vec<usize>) {
    let row_len: usize = shape[1..].iter().product();
    let mut out = Vec::with_capacity(indices.len() * row_len);
    for &i in indices {
        let start = i as usize * row_len;
        out.extend_from_slice(&table[start..start + row_len]);
    }
    (out, with_dim(shape, 0, indices.len()))
}
