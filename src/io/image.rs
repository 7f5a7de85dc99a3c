//! PNG grids of grayscale images: how a run shows its samples, one row per class with the class
//! written at its left (a grid without labels leaves its reader to guess which row is which),
//! written atomically like every other file.
use std::path::Path;

use super::{atomic_write, font};
use crate::error::{Error, Result};

/// Pixels of background between tiles and around the grid.
const GAP: usize = 2;

/// A `rows × cols` grid of `height × width` grayscale images, given row-major in `images`
/// (image `r·cols + c` at row r, column c) with values in `[low, high]` mapped to black..white
/// (values outside are clamped; NaN is drawn black so a broken model is visible, not an error).
/// Row r is labelled `row_labels[r]` in a margin at the left.
pub struct Grid<'a> {
    pub images: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub height: usize,
    pub width: usize,
    pub range: (f32, f32),
    pub row_labels: &'a [&'a str],
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
        if self.row_labels.len() != self.rows {
            return Err(Error::Invalid(format!("{} row labels for a grid of {} rows", self.row_labels.len(), self.rows)));
        }
        Ok(())
    }

    /// The labels' size in pixels: half a tile's height, so that a label reads beside its row
    /// without reaching the next.
    fn label_size(&self) -> f32 {
        self.height as f32 * 0.5
    }

    /// The width of the label margin: the widest label and a gap before the tiles.
    fn label_margin(&self) -> Result<usize> {
        let mut widest = 0.0f32;
        for label in self.row_labels {
            widest = widest.max(font::text_width(label, self.label_size())?);
        }
        Ok(if widest > 0.0 { widest.ceil() as usize + GAP } else { 0 })
    }

    /// The grid's size in pixels: (width, height).
    pub fn pixel_size(&self) -> Result<(usize, usize)> {
        self.check()?;
        Ok((GAP + self.label_margin()? + self.cols * (self.width + GAP), GAP + self.rows * (self.height + GAP)))
    }

    /// The 8-bit canvas, row-major, background black, labels white.
    pub fn render(&self) -> Result<Vec<u8>> {
        let (canvas_w, canvas_h) = self.pixel_size()?;
        let mut canvas = vec![0u8; canvas_w * canvas_h];
        let size = self.label_size();
        let (ascent, descent) = font::line_metrics(size)?;
        for (r, label) in self.row_labels.iter().enumerate() {
            // The text's box centred on the row.
            let middle = (GAP + r * (self.height + GAP)) as f32 + self.height as f32 / 2.0;
            font::draw_gray(&mut canvas, canvas_w, label, size, GAP as f32, middle + (ascent - descent) / 2.0)?;
        }
        let (low, high) = self.range;
        let tile = self.height * self.width;
        for (index, image) in self.images.chunks_exact(tile).enumerate() {
            let (top, left) = tile_origin(canvas_w, (index / self.cols, index % self.cols), self.cols, (self.height, self.width));
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
        let (w, h) = self.pixel_size()?;
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

/// Where tile (r, c) of a grid `canvas_w` pixels wide starts: (top, left). Tiles are placed from
/// the right edge, past the label margin, so [`read_grid_tiles`] finds them whatever the labels.
fn tile_origin(canvas_w: usize, (r, c): (usize, usize), cols: usize, (height, width): (usize, usize)) -> (usize, usize) {
    (GAP + r * (height + GAP), canvas_w - (cols - c) * (width + GAP))
}

/// The `rows × cols` tiles of `height × width` pixels of a grid PNG that [`Grid::write_png`]
/// wrote (with or without a label margin), row-major, each pixel in [0, 1]: how a report draws a
/// run's latest grid again with its own labels.
pub fn read_grid_tiles(path: &Path, rows: usize, cols: usize, height: usize, width: usize) -> Result<Vec<f32>> {
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let mut reader =
        png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(|e| Error::file(path, format!("not a PNG: {e}")))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    let grid_h = GAP + rows * (height + GAP);
    let tiles_w = GAP + cols * (width + GAP);
    let gray = (reader.info().color_type, reader.info().bit_depth) == (png::ColorType::Grayscale, png::BitDepth::Eight);
    if !gray || h != grid_h || w < tiles_w {
        return Err(Error::file(
            path,
            format!("is not a grid of {rows} × {cols} tiles of {height} × {width} pixels as dpgan draws them ({w} × {h} pixels)"),
        ));
    }
    let mut canvas = vec![0u8; reader.output_buffer_size().ok_or_else(|| Error::file(path, "too large"))?];
    reader.next_frame(&mut canvas).map_err(|e| Error::file(path, format!("PNG data: {e}")))?;
    let mut tiles = Vec::with_capacity(rows * cols * height * width);
    for r in 0..rows {
        for c in 0..cols {
            let (top, left) = tile_origin(w, (r, c), cols, (height, width));
            for y in 0..height {
                tiles.extend(canvas[(top + y) * w + left..][..width].iter().map(|&p| p as f32 / 255.0));
            }
        }
    }
    Ok(tiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_land_where_they_belong() {
        // 2×3 tiles of 2×2 pixels; tile k has value k/5 in [0, 1]. Empty labels take no margin.
        let images: Vec<f32> = (0..6).flat_map(|k| [k as f32 / 5.0; 4]).collect();
        let grid = Grid { images: &images, rows: 2, cols: 3, height: 2, width: 2, range: (0.0, 1.0), row_labels: &["", ""] };
        let (w, h) = grid.pixel_size().unwrap();
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
    fn each_row_is_labelled_in_a_margin_beside_it() {
        // Black tiles: every lit pixel is a label's.
        let (rows, cols, side) = (3, 2, 28);
        let images = vec![0.0; rows * cols * side * side];
        let labels = ["1", "7", "Ankle boot"];
        let grid = Grid { images: &images, rows, cols, height: side, width: side, range: (0.0, 1.0), row_labels: &labels };
        let (w, h) = grid.pixel_size().unwrap();
        let margin = w - (2 + cols * (side + 2));
        assert_eq!(h, 2 + rows * (side + 2));
        assert_eq!(margin, font::text_width("Ankle boot", 14.0).unwrap().ceil() as usize + 2, "the widest label sets the margin");
        let canvas = grid.render().unwrap();
        let lit = |r: usize| -> Vec<(usize, usize)> {
            let band = 2 + r * (side + 2)..2 + r * (side + 2) + side;
            band.flat_map(|y| (0..w).map(move |x| (x, y))).filter(|&(x, y)| canvas[y * w + x] > 0).collect()
        };
        let shapes: Vec<Vec<(usize, usize)>> = (0..rows).map(lit).collect();
        for (r, shape) in shapes.iter().enumerate() {
            assert!(shape.len() > 10, "row {r}'s label drew {} pixels", shape.len());
            assert!(shape.iter().all(|&(x, _)| x < margin), "row {r}'s label reaches the tiles");
        }
        let lit_total = canvas.iter().filter(|&&p| p > 0).count();
        assert_eq!(lit_total, shapes.iter().map(Vec::len).sum::<usize>(), "a label outside its row's band");
        let relative = |r: usize| shapes[r].iter().map(|&(x, y)| (x, y - r * (side + 2))).collect::<Vec<_>>();
        assert_ne!(relative(0), relative(1), "\"1\" and \"7\" drew the same");
    }

    #[test]
    fn range_maps_to_black_and_white_and_clamps() {
        let images = [-1.0, 1.0, 5.0, f32::NAN];
        let grid = Grid { images: &images, rows: 1, cols: 1, height: 2, width: 2, range: (-1.0, 1.0), row_labels: &[""] };
        let canvas = grid.render().unwrap();
        let w = grid.pixel_size().unwrap().0;
        assert_eq!(&canvas[2 * w + 2..2 * w + 4], &[0, 255]);
        assert_eq!(&canvas[3 * w + 2..3 * w + 4], &[255, 0]);
    }

    #[test]
    fn wrong_sizes_are_named() {
        let grid = Grid { images: &[0.0; 3], rows: 1, cols: 1, height: 2, width: 2, range: (0.0, 1.0), row_labels: &["0"] };
        assert!(grid.render().unwrap_err().to_string().contains("4 expected"));
        let grid = Grid { images: &[0.0; 4], rows: 1, cols: 1, height: 2, width: 2, range: (0.0, 1.0), row_labels: &[] };
        assert!(grid.render().unwrap_err().to_string().contains("0 row labels for a grid of 1 rows"));
    }

    #[test]
    fn png_decodes_back_to_the_canvas_and_its_tiles() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols, height, width) = (2, 3, 10, 8);
        let images: Vec<f32> = (0..rows * cols * height * width).map(|i| (i % 7) as f32 / 6.0).collect();
        let quantised: Vec<f32> = images.iter().map(|v| (v * 255.0).round() / 255.0).collect();
        for labels in [["Trouser", "Bag"], ["", ""]] {
            let path = dir.path().join("grid.png");
            let grid = Grid { images: &images, rows, cols, height, width, range: (0.0, 1.0), row_labels: &labels };
            grid.write_png(&path).unwrap();
            let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
            let mut reader = decoder.read_info().unwrap();
            let mut buf = vec![0; reader.output_buffer_size().unwrap()];
            let info = reader.next_frame(&mut buf).unwrap();
            assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Eight));
            assert_eq!((info.width as usize, info.height as usize), grid.pixel_size().unwrap());
            assert_eq!(&buf[..info.buffer_size()], &grid.render().unwrap()[..]);
            assert_eq!(read_grid_tiles(&path, rows, cols, height, width).unwrap(), quantised, "labels {labels:?}");
        }
        let err = read_grid_tiles(&dir.path().join("grid.png"), rows + 1, cols, height, width).unwrap_err().to_string();
        assert!(err.contains("is not a grid of 3 × 3 tiles"), "{err}");
    }
}
