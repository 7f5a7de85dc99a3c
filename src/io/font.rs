//! The one font dpgan draws text with: DejaVu Sans, embedded in the binary (the `dejavu` crate), so
//! that plots and grid labels come out the same on every machine and need no system font or
//! library. Grids rasterise it straight into their 8-bit canvas; plots get it through plotters.
use std::sync::{LazyLock, OnceLock};

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};

use crate::error::{Error, Result};

/// The family name plotters looks the font up by (its default for captions and axes).
pub const PLOT_FAMILY: &str = "sans-serif";

static FACE: LazyLock<Option<FontRef<'static>>> = LazyLock::new(|| FontRef::try_from_slice(dejavu::sans::regular()).ok());

fn face() -> Result<&'static FontRef<'static>> {
    FACE.as_ref().ok_or_else(|| Error::Invalid("the embedded DejaVu Sans font does not parse (a broken build)".into()))
}

/// Makes the font plotters' `sans-serif`; plotters without system fonts draws no text until a
/// font is registered. Idempotent.
pub fn register_for_plots() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(PLOT_FAMILY, plotters::style::FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid("plotters refused the embedded DejaVu Sans font".into()))
    }
}

/// Where a line of text at `size` pixels sits around its baseline: (ascent, descent), both
/// positive, in pixels.
pub fn line_metrics(size: f32) -> Result<(f32, f32)> {
    let scaled = face()?.as_scaled(PxScale::from(size));
    Ok((scaled.ascent(), -scaled.descent()))
}

/// The advance width of `text` at `size` pixels.
pub fn text_width(text: &str, size: f32) -> Result<f32> {
    Ok(layout(text, size)?.1)
}

/// Draws `text` white on an 8-bit grayscale `canvas` of width `canvas_w`, its baseline starting at
/// (`left`, `baseline`): each pixel keeps the brighter of itself and the glyph's coverage, so text
/// anti-aliases over a black background. Pixels outside the canvas are dropped.
pub fn draw_gray(canvas: &mut [u8], canvas_w: usize, text: &str, size: f32, left: f32, baseline: f32) -> Result<()> {
    let canvas_h = canvas.len() / canvas_w.max(1);
    let font = face()?;
    for (id, x) in layout(text, size)?.0 {
        let Some(outline) = font.outline_glyph(id.with_scale_and_position(PxScale::from(size), point(left + x, baseline))) else {
            continue; // a space
        };
        let bounds = outline.px_bounds();
        outline.draw(|x, y, coverage| {
            let (px, py) = (bounds.min.x as i64 + x as i64, bounds.min.y as i64 + y as i64);
            if (0..canvas_w as i64).contains(&px) && (0..canvas_h as i64).contains(&py) {
                let dst = &mut canvas[py as usize * canvas_w + px as usize];
                *dst = (*dst).max((coverage.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        });
    }
    Ok(())
}

/// Each character's glyph and pen position along the line (with kerning), and the total advance.
fn layout(text: &str, size: f32) -> Result<(Vec<(GlyphId, f32)>, f32)> {
    let scaled = face()?.as_scaled(PxScale::from(size));
    let (mut x, mut previous, mut glyphs) = (0.0f32, None, Vec::new());
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            x += scaled.kern(previous, id);
        }
        glyphs.push((id, x));
        x += scaled.h_advance(id);
        previous = Some(id);
    }
    Ok((glyphs, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_font_measures_and_draws() {
        let (ascent, descent) = line_metrics(14.0).unwrap();
        assert!(ascent > 10.0 && descent > 2.0 && ascent + descent < 20.0, "{ascent} {descent}");
        let (one, two) = (text_width("8", 14.0).unwrap(), text_width("88", 14.0).unwrap());
        assert!(one > 5.0 && (two - 2.0 * one).abs() < 0.5, "{one} {two}");
        let (w, h) = (40, 20);
        let mut canvas = vec![0u8; w * h];
        draw_gray(&mut canvas, w, "8", 14.0, 2.0, 15.0).unwrap();
        let lit: Vec<usize> = (0..w * h).filter(|&i| canvas[i] > 128).collect();
        assert!(lit.len() > 10, "the glyph lit {} pixels", lit.len());
        // Inside its advance and above the baseline.
        assert!(lit.iter().all(|&i| (i % w) < 2 + one.ceil() as usize && i / w <= 15), "{lit:?}");
        register_for_plots().unwrap();
        register_for_plots().unwrap();
    }
}
