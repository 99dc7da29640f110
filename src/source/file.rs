//! JSONL files as an event source: several files merged by `occurred_at` (docs/design.md §3 Input).
//!
//! Each file is read in order; the merge always takes the earliest head among the files
//! (ties: the earlier file), so a file's own out-of-order lines stay out of order, as they
//! would on a Kafka partition. A line that cannot be parsed is handed on at once.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::event::{Event, Limits, Reject};

/// Bytes of an over-long line kept as its evidence in `rejects.jsonl`.
pub const TOO_LARGE_PREFIX: usize = 1024;

/// One input line, parsed or rejected.
#[derive(Debug)]
pub struct Record {
    /// Index of the file in the source's list.
    pub file: usize,
    /// 1-based line number.
    pub line: u64,
    /// The line as read (invalid UTF-8 replaced), without the newline.
    pub raw: String,
    /// The original bytes, kept only when they are not valid UTF-8 (else `raw` is exact).
    pub raw_bytes: Option<Vec<u8>>,
    /// The event, or why it was rejected.
    pub parsed: Result<Event, Reject>,
}

struct Reader {
    lines: Box<dyn BufRead>,
    line: u64,
    buf: Vec<u8>,
    /// Bytes read so far (for the progress line).
    bytes: u64,
}

/// Reads one line into `buf`, keeping at most `keep` bytes of it, so a line of any
/// length costs at most `keep` bytes of memory. Returns the bytes consumed (0 at the
/// end) and the line's whole length without its line break.
fn read_line_bounded(
    r: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    keep: usize,
) -> io::Result<(usize, usize)> {
    let (mut consumed, mut len) = (0usize, 0usize);
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], true),
            None => (avail, false),
        };
        let room = keep.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        len += chunk.len();
        let used = chunk.len() + usize::from(done);
        r.consume(used);
        consumed += used;
        if done {
            break;
        }
    }
    if len > 0 && len <= buf.len() && buf.last() == Some(&b'\r') {
        buf.pop();
        len -= 1;
    }
    Ok((consumed, len))
}

impl Reader {
    fn next(&mut self, file: usize, limits: &Limits) -> io::Result<Option<Record>> {
        loop {
            self.buf.clear();
            let (n, len) =
                read_line_bounded(&mut *self.lines, &mut self.buf, limits.max_event_bytes)?;
            if n == 0 {
                return Ok(None);
            }
            self.bytes += n as u64;
            self.line += 1;
            if let Err(rej) = limits.check_size(len) {
                // Too long to hold: its first bytes are the evidence, the rest is skipped.
                let prefix = &self.buf[..self.buf.len().min(TOO_LARGE_PREFIX)];
                return Ok(Some(Record {
                    file,
                    line: self.line,
                    raw: String::from_utf8_lossy(prefix).into_owned(),
                    raw_bytes: std::str::from_utf8(prefix)
                        .is_err()
                        .then(|| prefix.to_vec()),
                    parsed: Err(rej),
                }));
            }
            if self.buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Record {
                file,
                line: self.line,
                raw: String::from_utf8_lossy(&self.buf).into_owned(),
                raw_bytes: std::str::from_utf8(&self.buf)
                    .is_err()
                    .then(|| self.buf.clone()),
                parsed: limits.parse(&self.buf, super::wall_now()),
            }));
        }
    }
}

/// Merges JSONL files by event time.
pub struct FileSource {
    paths: Vec<PathBuf>,
    readers: Vec<Reader>,
    heads: Vec<Option<Record>>,
    /// Total size of the inputs, when every one is a file.
    size: Option<u64>,
    limits: Limits,
}

impl FileSource {
    /// Opens every file (`-` reads standard input); records are checked against `limits`.
    pub fn open(paths: &[PathBuf], limits: Limits) -> io::Result<FileSource> {
        let mut readers = Vec::with_capacity(paths.len());
        let mut size = Some(0u64);
        for p in paths {
            let lines: Box<dyn BufRead> = if p == Path::new("-") {
                size = None;
                Box::new(BufReader::new(io::stdin()))
            } else {
                let f = File::open(p).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
                })?;
                let len = f.metadata().map(|m| m.len()).ok();
                size = size.zip(len).map(|(a, b)| a + b);
                Box::new(BufReader::with_capacity(1 << 16, f))
            };
            readers.push(Reader {
                lines,
                line: 0,
                buf: Vec::with_capacity(512),
                bytes: 0,
            });
        }
        let mut src = FileSource {
            paths: paths.to_vec(),
            heads: (0..readers.len()).map(|_| None).collect(),
            readers,
            size,
            limits,
        };
        for i in 0..src.readers.len() {
            src.heads[i] = src.readers[i].next(i, &limits)?;
        }
        Ok(src)
    }

    /// Share of the input read so far (0–1), when the inputs are files.
    pub fn fraction_read(&self) -> Option<f64> {
        let size = self.size.filter(|s| *s > 0)?;
        let read: u64 = self.readers.iter().map(|r| r.bytes).sum();
        Some((read as f64 / size as f64).min(1.0))
    }

    /// The path of file `i`.
    pub fn path(&self, i: usize) -> &Path {
        &self.paths[i]
    }

    /// The next record in merged order, or `None` at the end of every file.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut best: Option<usize> = None;
        for (i, head) in self.heads.iter().enumerate() {
            let Some(rec) = head else { continue };
            let Ok(ev) = &rec.parsed else {
                best = Some(i);
                break;
            };
            let better = match best.and_then(|b| self.heads[b].as_ref()) {
                Some(Record { parsed: Ok(b), .. }) => ev.at < b.at,
                _ => true,
            };
            if better {
                best = Some(i);
            }
        }
        let Some(i) = best else { return Ok(None) };
        let next = self.readers[i].next(i, &self.limits)?;
        Ok(std::mem::replace(&mut self.heads[i], next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], keep: usize) -> Vec<(Vec<u8>, usize)> {
        let mut r = io::BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            let (n, len) = read_line_bounded(&mut r, &mut buf, keep).expect("read");
            if n == 0 {
                return out;
            }
            out.push((buf, len));
        }
    }

    #[test]
    fn a_long_line_is_measured_not_held() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\nshort\r\nlast");
        let got = lines(&input, 10);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (vec![b'x'; 10], 100), "kept 10 bytes of 100");
        assert_eq!(got[1], (b"short".to_vec(), 5), "CR LF stripped");
        assert_eq!(got[2], (b"last".to_vec(), 4), "no newline at the end");
    }
}
