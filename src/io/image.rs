//! PNG grids of grayscale images: how a run shows its samples (one row per class), written
//! atomically like every other file.
use std::path::Path;

use super::atomic_write;
use crate::error::{Error, Result};

/// Pixels of background between tiles and around the grid.
const GAP: usize = 2;

/// A `rows × cols` grid of `height × width` grayscale images, given row-major in `images`
/// (image `r·cols + c` at row r, column c) with values in `[low, high]` mapped to black..white
/// (values outside are clamped; NaN is drawn black so a broken model is visible, not an error).
pub struct Grid<'a> {
    pub images: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub height: usize,
    pub width: usize,
    pub range: (f32, f32),
}

impl Grid<'_> {
    fn check(&self) -> Result<()> {
        let expected = self.rows * self.cols * self.height * self.width;
        if self.rows == 0 || self.cols == 0 || self.height == 0 || self.width == 0 {
            return Err(Error::Invalid(format!(
                "an image grid needs at least one {}×{} tile, got {}×{} tiles",
                self.height, self.width, self.rows, self.cols
            )));
        }
        if self.images.len() != expected {
            return Err(Error::Invalid(format!(
                "{} values for a grid of {}×{} images of {}×{} pixels ({expected} expected)",
                self.images.len(),
                self.rows,
                self.cols,
                self.height,
                self.width
            )));
        }
        let (low, high) = self.range;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(Error::Invalid(format!("pixel range must satisfy low < high, got [{low}, {high}]")));
        }
        Ok(())
    }

    /// The grid's size in pixels: (width, height).
    pub fn pixel_size(&self) -> (usize, usize) {
        (GAP + self.cols * (self.width + GAP), GAP + self.rows * (self.height + GAP))
    }

    /// The 8-bit canvas, row-major, background black.
    pub fn render(&self) -> Result<Vec<u8>> {
        self.check()?;
        let (canvas_w, canvas_h) = self.pixel_size();
        let mut canvas = vec![0u8; canvas_w * canvas_h];
        let (low, high) = self.range;
        let tile = self.height * self.width;
        for (index, image) in self.images.chunks_exact(tile).enumerate() {
            let (r, c) = (index / self.cols, index % self.cols);
            let (top, left) = (GAP + r * (self.height + GAP), GAP + c * (self.width + GAP));
            for y in 0..self.height {
                let row = &mut canvas[(top + y) * canvas_w + left..][..self.width];
                for (dst, &v) in row.iter_mut().zip(&image[y * self.width..][..self.width]) {
                    let unit = if v.is_nan() { 0.0 } else { ((v - low) / (high - low)).clamp(0.0, 1.0) };
                    *dst = (unit * 255.0).round() as u8;
                }
            }
        }
        Ok(canvas)
    }

    /// Encodes the grid as an 8-bit grayscale PNG and writes it atomically to `path`.
    pub fn write_png(&self, path: &Path) -> Result<()> {
        let canvas = self.render()?;
        let (w, h) = self.pixel_size();
        let mut encoded = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut encoded, w as u32, h as u32);
            encoder.set_color(png::ColorType::Grayscale);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(|e| Error::file(path, format!("PNG header: {e}")))?;
            writer.write_image_data(&canvas).map_err(|e| Error::file(path, format!("PNG data: {e}")))?;
        }
        atomic_write(path, &encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_land_where_they_belong() {
        // 2×3 tiles of 2×2 pixels; tile k has value k/5 in [0, 1].
        let images: Vec<f32> = (0..6).flat_map(|k| [k as f32 / 5.0; 4]).collect();
        let grid = Grid { images: &images, rows: 2, cols: 3, height: 2, width: 2, range: (0.0, 1.0) };
        let (w, h) = grid.pixel_size();
        assert_eq!((w, h), (2 + 3 * 4, 2 + 2 * 4));
        let canvas = grid.render().unwrap();
        for k in 0..6 {
            let (r, c) = (k / 3, k % 3);
            let (top, left) = (2 + r * 4, 2 + c * 4);
            for y in 0..2 {
                for x in 0..2 {
                    assert_eq!(canvas[(top + y) * w + left + x], (k as f32 / 5.0 * 255.0).round() as u8, "tile {k}");
                }
            }
        }
        // The gaps stay background.
        assert_eq!(canvas[0], 0);
        assert_eq!(canvas[4 * w + 4], 0);
    }

    #[test]
    fn range_maps_to_black_and_white_and_clamps() {
        let images = [-1.0, 1.0, 5.0, f32::NAN];
        let grid = Grid { images: &images, rows: 1, cols: 1, height: 2, width: 2, range: (-1.0, 1.0) };
        let canvas = grid.render().unwrap();
        let w = grid.pixel_size().0;
        assert_eq!(&canvas[2 * w + 2..2 * w + 4], &[0, 255]);
        assert_eq!(&canvas[3 * w + 2..3 * w + 4], &[255, 0]);
    }

    #[test]
    fn wrong_sizes_are_named() {
        let grid = Grid { images: &[0.0; 3], rows: 1, cols: 1, height: 2, width: 2, range: (0.0, 1.0) };
        assert!(grid.render().unwrap_err().to_string().contains("4 expected"));
    }

    #[test]
    fn png_decodes_back_to_the_canvas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let images: Vec<f32> = (0..2 * 2 * 3 * 5).map(|i| (i % 7) as f32 / 6.0).collect();
        let grid = Grid { images: &images, rows: 2, cols: 2, height: 3, width: 5, range: (0.0, 1.0) };
        grid.write_png(&path).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width as usize, info.height as usize), grid.pixel_size());
        assert_eq!(&buf[..info.buffer_size()], &grid.render().unwrap()[..]);
    }
}
