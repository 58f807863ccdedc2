//! What the benches' charts share: the font plotters draws text with, and
//! the palette. Included by each bench that draws (`#[path]`).

use anyhow::{Result, anyhow};
use plotters::style::{FontStyle, RGBColor};

/// Debian's `fonts-dejavu-core`.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Series colours, in order (blue, orange, green).
pub const COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// Registers DejaVu Sans with plotters as "sans-serif"; says why not if it
/// cannot (a bench then skips its chart rather than failing).
pub fn register_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .map_err(|e| anyhow!("{FONT}: {e} (install fonts-dejavu-core); skipping the chart"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font; skipping the chart"))?;
    Ok(())
}
