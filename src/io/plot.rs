//! Line charts as PNG, for `dpgan report`: panels stacked top to bottom over one x axis, each with
//! its series and any horizontal levels (a target ε, a budget), drawn by plotters into memory with
//! the embedded font ([`super::font`]), encoded by `png` and written atomically.
use std::path::Path;

use plotters::prelude::*;

use super::{atomic_write, font};
use crate::error::{Error, Result};

/// One series: (x, y) points; non-finite ones are left out.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A horizontal dashed line across a panel, e.g. the ε budget.
pub struct Level {
    pub name: String,
    pub value: f64,
}

/// One chart of the stack.
pub struct Panel {
    pub title: String,
    pub y_label: String,
    pub lines: Vec<Line>,
    pub levels: Vec<Level>,
    /// Whether the y axis starts at 0 (for ε, which starts there), else at the data.
    pub y_from_zero: bool,
}

/// Width of a chart, and the height of each panel, in pixels.
const WIDTH: u32 = 900;
const PANEL_HEIGHT: u32 = 340;
/// Series colours in order; levels are drawn in black.
const COLOURS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Draws `panels` over the x axis `x_label` and writes the chart to `path` as an RGB PNG.
pub fn write_line_chart(path: &Path, x_label: &str, panels: &[Panel]) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::Invalid(format!("a chart for {} needs at least one panel", path.display())));
    }
    font::register_for_plots()?;
    let (w, h) = (WIDTH, PANEL_HEIGHT * panels.len() as u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    let drawn = (|| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, panel) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
            draw_panel(area, x_label, panel)?;
        }
        root.present()?;
        Ok(())
    })();
    drawn.map_err(|e| Error::file(path, format!("cannot draw the chart: {e}")))?;
    let mut encoded = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut encoded, w, h);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| Error::file(path, format!("PNG header: {e}")))?;
        writer.write_image_data(&rgb).map_err(|e| Error::file(path, format!("PNG data: {e}")))?;
    }
    atomic_write(path, &encoded)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_panel(area: &Area, x_label: &str, panel: &Panel) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let finite = |&&(x, y): &&(f64, f64)| x.is_finite() && y.is_finite();
    let points: Vec<(f64, f64)> = panel.lines.iter().flat_map(|l| l.points.iter().filter(finite).copied()).collect();
    if points.is_empty() {
        return Err(format!("no finite point to plot in \"{}\"", panel.title).into());
    }
    let xs = padded(points.iter().map(|p| p.0), 0.0);
    let zero = panel.y_from_zero.then_some(0.0);
    let mut ys = padded(points.iter().map(|p| p.1).chain(panel.levels.iter().map(|l| l.value).filter(|v| v.is_finite())).chain(zero), 0.05);
    if panel.y_from_zero && ys.0 < 0.0 && points.iter().all(|p| p.1 >= 0.0) {
        ys.0 = 0.0;
    }
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (font::PLOT_FAMILY, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(xs.0..xs.1, ys.0..ys.1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_label_formatter(&|x| if x.fract() == 0.0 { format!("{x:.0}") } else { format!("{x}") })
        .y_desc(&panel.y_label)
        .label_style((font::PLOT_FAMILY, 14))
        .axis_desc_style((font::PLOT_FAMILY, 15))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, line) in panel.lines.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let style = ShapeStyle::from(colour).stroke_width(2);
        chart
            .draw_series(LineSeries::new(line.points.iter().filter(finite).copied(), style))?
            .label(&line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    for level in panel.levels.iter().filter(|l| l.value.is_finite()) {
        let style = ShapeStyle::from(BLACK).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(xs.0, level.value), (xs.1, level.value)], 8, 5, style))?
            .label(&level.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
    }
    if panel.lines.len() + panel.levels.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((font::PLOT_FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

/// The range of `values` widened by `margin` of its span on each side; a single value gets a
/// range around it, so one logged step still draws.
fn padded(values: impl Iterator<Item = f64>, margin: f64) -> (f64, f64) {
    let (low, high) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
    let span = high - low;
    if span > 0.0 {
        (low - margin * span, high + margin * span)
    } else {
        let half = (low.abs() * 0.1).max(0.5);
        (low - half, high + half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> (png::OutputInfo, Vec<u8>) {
        let mut reader = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        (info, buf)
    }

    #[test]
    fn a_chart_draws_its_lines_and_levels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let line = |name: &str, f: fn(f64) -> f64| Line { name: name.into(), points: (1..=50).map(|s| (s as f64, f(s as f64))).collect() };
        let panels = [
            Panel {
                title: "ε".into(),
                y_label: "ε".into(),
                lines: vec![line("a", f64::sqrt)],
                levels: vec![Level { name: "budget".into(), value: 8.0 }],
                y_from_zero: true,
            },
            Panel {
                title: "one point".into(),
                y_label: "y".into(),
                lines: vec![Line { name: "b".into(), points: vec![(3.0, 1.0), (4.0, f64::NAN)] }],
                levels: vec![],
                y_from_zero: false,
            },
        ];
        write_line_chart(&path, "step", &panels).unwrap();
        let (info, rgb) = decode(&path);
        assert_eq!((info.width, info.height, info.color_type), (WIDTH, 2 * PANEL_HEIGHT, png::ColorType::Rgb));
        let count = |c: RGBColor| rgb.chunks_exact(3).filter(|p| *p == [c.0, c.1, c.2]).count();
        assert!(count(COLOURS[0]) > 200, "the first series drew {} pixels", count(COLOURS[0]));
        assert!(count(BLACK) > 500, "text, axes and the level drew {} black pixels", count(BLACK));
        let empty = Panel { title: "empty".into(), y_label: "y".into(), lines: vec![], levels: vec![], y_from_zero: false };
        let err = write_line_chart(&path, "step", &[empty]);
        assert!(err.unwrap_err().to_string().contains("no finite point to plot in \"empty\""));
    }
}
