//! Reading request lines with a length limit that keeps the connection usable.
//!
//! A line longer than the limit is skipped up to its newline and reported as
//! [`Line::TooLong`]; the next line is read normally. (tokio-util's `LinesCodec` ends the
//! stream after its first error, which would drop a client for one bad line.)

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// One line read from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Line {
    /// A line of text (without its `\n` or `\r\n`).
    Text(String),
    /// A line longer than the limit; it was skipped.
    TooLong,
    /// A line that is not UTF-8; it was skipped.
    NotUtf8,
}

/// Reads [`Line`]s from `R`.
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    max: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Lines of at most `max` bytes from `inner`.
    pub(crate) fn new(inner: R, max: usize) -> Self {
        Self {
            inner: BufReader::new(inner),
            max,
        }
    }

    /// The next line, or `None` at the end of the stream.
    pub(crate) async fn next(&mut self) -> std::io::Result<Option<Line>> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                // End of stream: a last line without a newline still counts.
                return Ok(match (too_long, line.is_empty()) {
                    (true, _) => Some(Line::TooLong),
                    (false, true) => None,
                    (false, false) => Some(decode(line)),
                });
            }
            let (chunk, end) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            if !too_long {
                if line.len() + chunk.len() > self.max {
                    too_long = true;
                    line = Vec::new();
                } else {
                    line.extend_from_slice(chunk);
                }
            }
            let consumed = end.unwrap_or(available.len());
            self.inner.consume(consumed);
            if end.is_some() {
                return Ok(Some(if too_long {
                    Line::TooLong
                } else {
                    decode(line)
                }));
            }
        }
    }
}

fn decode(mut bytes: Vec<u8>) -> Line {
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    match String::from_utf8(bytes) {
        Ok(text) => Line::Text(text),
        Err(_) => Line::NotUtf8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next().await.unwrap() {
            out.push(line);
        }
        out
    }

    #[tokio::test]
    async fn long_lines_are_skipped_and_the_stream_goes_on() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100));
        input.extend(b"\r\nafter\r\n\xff\xfe\nlast");
        assert_eq!(
            lines(&input, 10).await,
            vec![
                Line::Text("short".into()),
                Line::TooLong,
                Line::Text("after".into()),
                Line::NotUtf8,
                Line::Text("last".into()),
            ]
        );
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_fine() {
        assert_eq!(
            lines(b"0123456789\n", 10).await,
            vec![Line::Text("0123456789".into())]
        );
        assert_eq!(lines(b"0123456789A\n", 10).await, vec![Line::TooLong]);
        assert_eq!(lines(b"", 10).await, vec![]);
    }
}
