//! QR images: SVG (the default), PNG, and PNG as a `data:` URL for JSON answers.
//!
//! A QR code is a pairing secret: images are answered with `Cache-Control: no-store` and never
//! logged.

use base64::Engine;
use qrcode::render::svg;
use qrcode::{Color, QrCode};

/// Pixels per QR module in PNG images.
const PNG_SCALE: usize = 8;
/// Modules of white border on each side, as the QR standard asks.
const QUIET_ZONE: usize = 4;

/// The text could not be encoded as a QR code (too long for the largest version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the QR text cannot be encoded as an image: {0}")]
pub struct QrError(String);

fn encode(text: &str) -> Result<QrCode, QrError> {
    QrCode::new(text.as_bytes()).map_err(|e| QrError(e.to_string()))
}

/// An SVG image of `text`, at least 256 px wide, black on white.
pub fn svg(text: &str) -> Result<String, QrError> {
    Ok(encode(text)?
        .render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build())
}

/// A PNG image of `text` (8-bit grayscale, 8 px per module, with the quiet zone).
pub fn png(text: &str) -> Result<Vec<u8>, QrError> {
    let code = encode(text)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PNG_SCALE;
    let mut pixels = vec![0xffu8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            let row = y * side;
            pixels[row + mx * PNG_SCALE..row + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let side = u32::try_from(side).map_err(|e| QrError(e.to_string()))?;
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| QrError(e.to_string()))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| QrError(e.to_string()))?;
        writer.finish().map_err(|e| QrError(e.to_string()))?;
    }
    Ok(out)
}

/// The PNG image of `text` as a `data:image/png;base64,…` URL, ready for an `<img src>`.
pub fn png_data_url(text: &str) -> Result<String, QrError> {
    let png = png(text)?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str =
        "2@abcdefghijklmnopqrstuvwxyz0123456789,ABCDEFGHIJKLMNOPQRSTUVWXYZ=,0123456789abcdef,1";

    #[test]
    fn images_are_well_formed() {
        let svg = svg(CODE).unwrap();
        assert!(svg.starts_with("<?xml"), "{}", &svg[..40]);
        assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));

        let png = png(CODE).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(&png));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert_eq!(info.width, info.height);
        assert_eq!(info.width as usize % PNG_SCALE, 0);
        assert!(info.width >= 200, "{}", info.width);

        let url = png_data_url(CODE).unwrap();
        assert!(
            url.starts_with("data:image/png;base64,iVBORw0KGgo"),
            "{}",
            &url[..40]
        );
    }

    #[test]
    fn png_modules_match_the_code() {
        let png = png("hello").unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        let side = frame.width as usize;
        let code = encode("hello").unwrap();
        let modules = code.width();
        assert_eq!(side, (modules + 2 * QUIET_ZONE) * PNG_SCALE);
        let colors = code.to_colors();
        for my in 0..modules {
            for mx in 0..modules {
                let px = buf[((my + QUIET_ZONE) * PNG_SCALE + 3) * side
                    + (mx + QUIET_ZONE) * PNG_SCALE
                    + 3];
                let dark = colors[my * modules + mx] == Color::Dark;
                assert_eq!(px == 0, dark, "module {mx},{my}");
            }
        }
        assert_eq!(buf[0], 0xff, "the quiet zone is white");
    }
}
