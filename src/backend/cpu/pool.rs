//! 2×2 pooling and nearest ×2 upsampling over the last two dims `[.., H, W]`.
use super::Real;

fn planes(shape: &[usize]) -> (usize, usize, usize) {
    let r = shape.len();
    (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1])
}

fn with_hw(shape: &[usize], h: usize, w: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    let r = s.len();
    s[r - 2] = h;
    s[r - 1] = w;
    s
}

/// Offset (within the plane) of the first maximum of `x` in the window at (oy, ox).
fn argmax<T: Real>(x: &[T], w: usize, oy: usize, ox: usize) -> usize {
    let mut best = (2 * oy) * w + 2 * ox;
    for (dy, dx) in [(0, 1), (1, 0), (1, 1)] {
        let at = (2 * oy + dy) * w + 2 * ox + dx;
        // A NaN wins and propagates, as in PyTorch.
        if x[at] > x[best] || x[at].is_nan() {
            best = at;
        }
    }
    best
}

/// `out[.., oy, ox] = v[.., argmax of x's window]`.
pub fn max_pool2x2_gather<T: Real>(x: &[T], v: &[T], shape: &[usize]) -> (Vec<T>, Vec<usize>) {
    let (n, h, w) = planes(shape);
    let (oh, ow) = (h / 2, w / 2);
    let mut out = Vec::with_capacity(n * oh * ow);
    for p in 0..n {
        let (xp, vp) = (&x[p * h * w..(p + 1) * h * w], &v[p * h * w..(p + 1) * h * w]);
        for oy in 0..oh {
            for ox in 0..ow {
                out.push(vp[argmax(xp, w, oy, ox)]);
            }
        }
    }
    (out, with_hw(shape, oh, ow))
}

/// `d_x` of max pooling: `dy` routed to each window's argmax in `x`.
pub fn max_pool2x2_scatter<T: Real>(x: &[T], dy: &[T], shape: &[usize]) -> Vec<T> {
    let (n, h, w) = planes(shape);
    let (oh, ow) = (h / 2, w / 2);
    let mut d_x = vec![T::zero(); x.len()];
    for p in 0..n {
        let xp = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let at = p * h * w + argmax(xp, w, oy, ox);
                d_x[at] += dy[(p * oh + oy) * ow + ox];
            }
        }
    }
    d_x
}

/// `out[.., y, x] = in[.., y/2, x/2]`.
pub fn upsample_nearest2x<T: Real>(x: &[T], shape: &[usize]) -> (Vec<T>, Vec<usize>) {
    let (n, h, w) = planes(shape);
    let mut out = Vec::with_capacity(4 * x.len());
    for p in 0..n {
        for y in 0..2 * h {
            let row = &x[(p * h + y / 2) * w..(p * h + y / 2 + 1) * w];
            for xx in 0..2 * w {
                out.push(row[xx / 2]);
            }
        }
    }
    (out, with_hw(shape, 2 * h, 2 * w))
}

/// `out[.., y, x] = Σ of the 2×2 window at (2y, 2x)`: the adjoint of the upsample.
pub fn sum_pool2x2<T: Real>(x: &[T], shape: &[usize]) -> (Vec<T>, Vec<usize>) {
    let (n, h, w) = planes(shape);
    let (oh, ow) = (h / 2, w / 2);
    let mut out = Vec::with_capacity(n * oh * ow);
    for p in 0..n {
        let xp = &x[p * h * w..(p + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let at = |dy: usize, dx: usize| xp[(2 * oy + dy) * w + 2 * ox + dx];
                out.push(at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1));
            }
        }
    }
    (out, with_hw(shape, oh, ow))
}
